//! The template environment shared by the text backends.
//!
//! It is built so that a template cannot print anything unchecked: undefined
//! values are errors (strict), there is no auto-escaping to bypass and no `safe`
//! filter, and the formatter — through which every `{{ value }}` is printed —
//! refuses any value with a character outside [`crate::text::is_render_safe`].
//! That is the second of the two allowlist checks (the first runs when the policy
//! is validated), so a bug in validation still cannot inject syntax.

use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior, Value};

use crate::text::{describe_char, is_render_safe};

/// Builds the environment with the given templates (name, source).
pub fn environment(templates: &[(&'static str, &'static str)]) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.remove_filter("safe");
    env.remove_filter("escape");
    env.remove_filter("e");
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
            .expect("the default syntax is valid"),
    );
    env.set_formatter(|out, _state, value| {
        let text = printable_value(value)?;
        check_render_safe(&text)?;
        out.write_str(&text).map_err(Error::from)
    });
    for (name, source) in templates {
        env.add_template(name, source)
            .expect("templates are embedded and tested");
    }
    env
}

fn printable_value(value: &Value) -> Result<String, Error> {
    if value.is_undefined() || value.is_none() {
        return Err(Error::new(
            ErrorKind::UndefinedError,
            "a template printed an undefined or none value",
        ));
    }
    Ok(match value.as_str() {
        Some(s) => s.to_string(),
        None => value.to_string(),
    })
}

/// Refuses text with any character that could end a string or start a statement.
pub fn check_render_safe(text: &str) -> Result<(), Error> {
    match text.chars().find(|c| !is_render_safe(*c)) {
        None => Ok(()),
        Some(c) => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "refusing to render a value containing {} (not in the output allowlist)",
                describe_char(c)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::context;

    fn render(source: &'static str, value: &str) -> Result<String, Error> {
        let env = environment(&[("t", source)]);
        env.get_template("t")?.render(context! { v => value })
    }

    #[test]
    fn formatter_refuses_injection_even_if_validation_missed_it() {
        for evil in [
            "x\"\nip daddr 0.0.0.0/0 accept",
            "$var",
            "a\0b",
            "a;b",
            "a#b",
            "a\\b",
        ] {
            assert!(render("comment \"{{ v }}\"", evil).is_err(), "{evil:?}");
        }
        assert_eq!(
            render("comment \"{{ v }}\"", "ok [x]").unwrap(),
            "comment \"ok [x]\""
        );
    }

    #[test]
    fn safe_filter_is_gone_and_undefined_is_an_error() {
        assert!(render("{{ v | safe }}", "x").is_err());
        assert!(render("{{ nothing }}", "x").is_err());
    }
}
