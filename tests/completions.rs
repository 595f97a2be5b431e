//! Shell completions and man pages, generated from the CLI definition.

use std::process::Output;

const BIN: &str = env!("CARGO_BIN_EXE_strangler");

fn strangler(args: &[&str]) -> Output {
    std::process::Command::new(BIN)
        .args(args)
        .output()
        .expect("run the strangler binary")
}

/// Each supported shell gets a script that knows every command, `migrate` included.
#[test]
fn completions_cover_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let output = strangler(&["completions", shell]);
        let script = String::from_utf8(output.stdout).expect("UTF-8 output");
        assert!(output.status.success(), "{shell}: exit {}", output.status);
        for command in ["run", "check", "explain", "migrate", "schema"] {
            assert!(
                script.contains(command),
                "{shell}: no `{command}` in\n{script}"
            );
        }
    }
}

/// An unknown shell is refused, naming the choices.
#[test]
fn completions_refuse_an_unknown_shell() {
    let output = strangler(&["completions", "tcsh"]);
    assert!(!output.status.success());
    let err = String::from_utf8(output.stderr).expect("UTF-8 output");
    assert!(err.contains("bash"), "{err}");
}

/// `man` prints a roff page that lists the commands.
#[test]
fn man_prints_a_page_listing_the_commands() {
    let output = strangler(&["man"]);
    let page = String::from_utf8(output.stdout).expect("UTF-8 output");
    assert!(output.status.success(), "exit {}", output.status);
    assert!(page.contains(".TH strangler 1"), "{page}");
    assert!(page.contains("migrate"), "{page}");
}

/// `man --dir` writes one page per command, each with its own options.
#[test]
fn man_dir_writes_one_page_per_command() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = dir.path().join("man1");
    let output = strangler(&["man", "--dir", out.to_str().expect("UTF-8 path")]);
    assert!(output.status.success(), "exit {}", output.status);
    let migrate =
        std::fs::read_to_string(out.join("strangler-migrate.1")).expect("strangler-migrate.1");
    assert!(migrate.contains("promote"), "{migrate}");
    let run = std::fs::read_to_string(out.join("strangler-run.1")).expect("strangler-run.1");
    assert!(run.contains("tls\\-listen"), "{run}");
    assert!(run.contains("STRANGLER_ROUTES"), "{run}");
    assert!(out.join("strangler.1").is_file());
}
