//! Which path templates can match the same path.
//!
//! The radix tree in `matcher` prefers a literal segment to a parameter,
//! from the left: for `/api/users/me/profile` it picks
//! `/api/users/{id}/profile` over `/{section}/users/me/profile`. Precedence
//! is not decided that way (literal segment count, then declaration order),
//! so the index must also try the templates that overlap the tree's pick.
//! This tree finds them once, when the table is built.

use std::collections::HashMap;

/// Template slots by segment shape: literal segments by text, parameters
/// and catch-alls by position only.
#[derive(Debug, Default)]
pub(crate) struct ShapeTree {
    literal: HashMap<Box<str>, ShapeTree>,
    param: Option<Box<ShapeTree>>,
    /// Slots whose template ends at this node.
    ends: Vec<usize>,
    /// Slots whose template has its catch-all at this node.
    catch_alls: Vec<usize>,
}

impl ShapeTree {
    /// Adds `slot`, whose template is split into `segments` at `/`.
    pub(crate) fn insert(&mut self, segments: &[&str], slot: usize) {
        match segments.split_first() {
            None => self.ends.push(slot),
            Some((s, _)) if s.starts_with("{*") => self.catch_alls.push(slot),
            Some((s, rest)) if s.starts_with('{') => self
                .param
                .get_or_insert_with(Box::default)
                .insert(rest, slot),
            Some((s, rest)) => self
                .literal
                .entry((*s).into())
                .or_default()
                .insert(rest, slot),
        }
    }

    /// Adds to `out` every slot whose template may match a path that the
    /// template `segments` matches. It may add more (catch-alls are taken
    /// whatever follows), never fewer: an extra one costs a check per
    /// request, a missing one a wrong route.
    pub(crate) fn overlapping(&self, segments: &[&str], out: &mut Vec<usize>) {
        out.extend(&self.catch_alls);
        let Some((segment, rest)) = segments.split_first() else {
            out.extend(&self.ends);
            return;
        };
        if segment.starts_with("{*") {
            self.all(out);
            return;
        }
        if let Some(param) = &self.param {
            param.overlapping(rest, out);
        }
        if segment.starts_with('{') {
            for child in self.literal.values() {
                child.overlapping(rest, out);
            }
        } else if let Some(child) = self.literal.get(*segment) {
            child.overlapping(rest, out);
        }
    }

    fn all(&self, out: &mut Vec<usize>) {
        out.extend(&self.ends);
        out.extend(&self.catch_alls);
        if let Some(param) = &self.param {
            param.all(out);
        }
        for child in self.literal.values() {
            child.all(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlaps(tree: &ShapeTree, template: &str) -> Vec<usize> {
        let segments: Vec<&str> = template.split('/').collect();
        let mut out = Vec::new();
        tree.overlapping(&segments, &mut out);
        out.sort_unstable();
        out
    }

    #[test]
    fn literals_and_parameters_overlap_by_position() {
        let mut tree = ShapeTree::default();
        for (slot, template) in [
            "/{p0}/users/me/profile",
            "/api/orders/{p0}",
            "/static/{*p0}",
            "/api/users/{p0}",
        ]
        .iter()
        .enumerate()
        {
            tree.insert(&template.split('/').collect::<Vec<_>>(), slot);
        }
        assert_eq!(overlaps(&tree, "/api/users/{p0}/profile"), [0]);
        assert_eq!(overlaps(&tree, "/api/{p0}/7"), [1, 3]);
        assert_eq!(overlaps(&tree, "/api/{p0}/7/x"), Vec::<usize>::new());
        assert_eq!(overlaps(&tree, "/api/{p0}/{p1}"), [1, 3]);
        assert_eq!(overlaps(&tree, "/{p0}/a.css"), [2]);
        assert_eq!(overlaps(&tree, "/{*p0}"), [0, 1, 2, 3]);
    }
}
