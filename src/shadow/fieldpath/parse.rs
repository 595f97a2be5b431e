//! Parser for field-path patterns; see the parent module for the syntax.

use super::{is_name_char, is_name_start, FieldPathError, Selector, Step, MAX_PATTERN_STEPS};

pub(super) struct Parser<'t> {
    text: &'t str,
    pos: usize,
}

const AFTER_DOT: &str = "a field name or `*` (or `[` after `..`)";
const AFTER_STEP: &str = "`.`, `[` or the end of the path (quote other keys: `[\"a-b c\"]`)";
const IN_BRACKETS: &str = "an index, `*` or a quoted key";

impl<'t> Parser<'t> {
    pub(super) fn new(text: &'t str) -> Parser<'t> {
        Parser { text, pos: 0 }
    }

    pub(super) fn parse(mut self) -> Result<Vec<Step>, FieldPathError> {
        if !self.eat('$') {
            return Err(FieldPathError::MissingRoot);
        }
        let mut steps = Vec::new();
        while let Some(c) = self.peek() {
            let (is_descendant, selector) = match c {
                '[' => (false, self.bracket()?),
                '.' => {
                    self.pos += 1;
                    let is_descendant = self.eat('.');
                    (is_descendant, self.after_dot(is_descendant)?)
                }
                found => return Err(self.unexpected(AFTER_STEP, found)),
            };
            if steps.len() == MAX_PATTERN_STEPS {
                return Err(FieldPathError::TooManySteps {
                    max: MAX_PATTERN_STEPS,
                });
            }
            steps.push(Step {
                selector,
                is_descendant,
            });
        }
        if steps.is_empty() {
            return Err(FieldPathError::WholeDocument);
        }
        Ok(steps)
    }

    /// The selector after `.` or `..`. Only `..` may be followed by a
    /// bracket: `$.a.[0]` is a typo for `$.a[0]`, not a second syntax.
    fn after_dot(&mut self, is_descendant: bool) -> Result<Selector, FieldPathError> {
        match self.peek() {
            Some('[') if is_descendant => self.bracket(),
            Some('*') => {
                self.pos += 1;
                Ok(Selector::Wildcard)
            }
            Some(c) if is_name_start(c) => Ok(Selector::Key(self.name().into())),
            Some(c) => Err(self.unexpected(AFTER_DOT, c)),
            None => Err(FieldPathError::UnexpectedEnd {
                pos: self.pos,
                expected: AFTER_DOT,
            }),
        }
    }

    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn eat(&mut self, want: char) -> bool {
        let hit = self.peek() == Some(want);
        if hit {
            self.pos += want.len_utf8();
        }
        hit
    }

    fn unexpected(&self, expected: &'static str, found: char) -> FieldPathError {
        FieldPathError::Unexpected {
            pos: self.pos,
            expected,
            found,
        }
    }

    fn expect(&mut self, want: char, expected: &'static str) -> Result<(), FieldPathError> {
        match self.peek() {
            Some(c) if c == want => {
                self.pos += c.len_utf8();
                Ok(())
            }
            Some(c) => Err(self.unexpected(expected, c)),
            None => Err(FieldPathError::UnexpectedEnd {
                pos: self.pos,
                expected,
            }),
        }
    }

    /// A shorthand name; the caller has checked the first character.
    fn name(&mut self) -> &str {
        let start = self.pos;
        while let Some(c) = self.peek().filter(|c| is_name_char(*c)) {
            self.pos += c.len_utf8();
        }
        &self.text[start..self.pos]
    }

    fn bracket(&mut self) -> Result<Selector, FieldPathError> {
        self.expect('[', "`[`")?;
        let selector = match self.peek() {
            Some('*') => {
                self.pos += 1;
                Selector::Wildcard
            }
            Some(q @ ('"' | '\'')) => Selector::Key(self.quoted(q)?.into()),
            Some(c) if c.is_ascii_digit() => self.index()?,
            Some(c) => return Err(self.unexpected(IN_BRACKETS, c)),
            None => {
                return Err(FieldPathError::UnexpectedEnd {
                    pos: self.pos,
                    expected: IN_BRACKETS,
                })
            }
        };
        self.expect(']', "`]`")?;
        Ok(selector)
    }

    fn index(&mut self) -> Result<Selector, FieldPathError> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        self.text[start..self.pos]
            .parse()
            .map(Selector::Index)
            .map_err(|_| FieldPathError::IndexTooLarge { pos: start })
    }

    fn quoted(&mut self, quote: char) -> Result<String, FieldPathError> {
        self.pos += 1;
        let mut key = String::new();
        loop {
            let at = self.pos;
            let c = self.peek().ok_or(FieldPathError::UnexpectedEnd {
                pos: at,
                expected: "a closing quote",
            })?;
            self.pos += c.len_utf8();
            match c {
                c if c == quote => return Ok(key),
                '\\' => key.push(self.escape()?),
                c => key.push(c),
            }
        }
    }

    fn escape(&mut self) -> Result<char, FieldPathError> {
        let at = self.pos;
        let c = self.peek().ok_or(FieldPathError::UnexpectedEnd {
            pos: at,
            expected: "an escape character",
        })?;
        self.pos += c.len_utf8();
        Ok(match c {
            '"' | '\'' | '\\' | '/' => c,
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'u' => {
                let hex = self.text.get(self.pos..self.pos + 4);
                let code = hex.and_then(|h| u32::from_str_radix(h, 16).ok());
                // Surrogates are refused: keys are rendered with `\u` only
                // for control characters, so a pair never needs to round-trip.
                let ch = code.and_then(char::from_u32);
                self.pos += 4;
                ch.ok_or(FieldPathError::BadEscape {
                    pos: at,
                    found: 'u',
                })?
            }
            found => return Err(FieldPathError::BadEscape { pos: at, found }),
        })
    }
}
