//! The template environment shared by the text backends.
//!
//! It is built so that a template cannot print anything unchecked: undefined
//! values are errors (strict), there is no auto-escaping to bypass and no `safe`
//! filter, and the formatter — through which every `{{ value }}` is printed —
//! refuses any value with a character outside [`crate::text::is_render_safe`].
//! That is the second of the two allowlist checks (the first runs when the policy
//! is validated), so a bug in validation still cannot inject syntax.
//!
//! Bulk parts of the output (100,000 set elements are 100,000 lines) are built in
//! Rust as [`CheckedText`] instead of being looped over in the template, which
//! would cost about ten times as much. A `CheckedText` can only be made by
//! [`CheckedTextBuilder`], whose every append is checked against the same
//! allowlists; the formatter prints it as is. Templates cannot make one.

use minijinja::value::Object;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior, Value};

use crate::text::{describe_char, is_quoted_safe, is_render_safe};

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
        if let Some(checked) = value.downcast_object_ref::<CheckedText>() {
            return out.write_str(&checked.0).map_err(Error::from);
        }
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
    if crate::text::all_render_safe(text) {
        return Ok(());
    }
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

/// Output text whose every piece passed an allowlist check when it was added.
#[derive(Debug)]
pub struct CheckedText(String);

impl Object for CheckedText {}

/// Builds [`CheckedText`] from generated bare text and quoted policy text.
#[derive(Debug, Default)]
pub struct CheckedTextBuilder {
    text: String,
}

impl CheckedTextBuilder {
    pub fn with_capacity(bytes: usize) -> Self {
        CheckedTextBuilder {
            text: String::with_capacity(bytes),
        }
    }

    /// Appends generated text (addresses, ports, keywords): render-safe only.
    pub fn bare(&mut self, text: &str) -> Result<&mut Self, Error> {
        check_render_safe(text)?;
        self.text.push_str(text);
        Ok(self)
    }

    /// Appends `"text"`: quoted-safe only, so it cannot end the string.
    pub fn quoted(&mut self, text: &str) -> Result<&mut Self, Error> {
        if !crate::text::all_quoted_safe(text)
            && let Some(c) = text.chars().find(|c| !is_quoted_safe(*c))
        {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!(
                    "refusing to quote a value containing {} (not in the quoted-string allowlist)",
                    describe_char(c)
                ),
            ));
        }
        self.text.push('"');
        self.text.push_str(text);
        self.text.push('"');
        Ok(self)
    }

    /// Ends the line; `indent` tabs start the next.
    pub fn newline(&mut self, indent: usize) -> &mut Self {
        self.text.push('\n');
        for _ in 0..indent {
            self.text.push('\t');
        }
        self
    }

    pub fn finish(self) -> Value {
        Value::from_object(CheckedText(self.text))
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
    fn checked_text_refuses_unsafe_pieces_and_prints_as_built() {
        let mut b = CheckedTextBuilder::default();
        assert!(b.quoted("a\"b").is_err());
        assert!(b.quoted("$x").is_err());
        assert!(b.bare("a;b").is_err());
        assert!(b.bare("a\nb").is_err());
        b.bare("1.2.3.4 . tcp . 443 comment ")
            .unwrap()
            .quoted("allow[0] host x")
            .unwrap();
        b.newline(1);
        let env = environment(&[("t", "[{{ v }}]")]);
        let out = env
            .get_template("t")
            .unwrap()
            .render(context! { v => b.finish() })
            .unwrap();
        assert_eq!(out, "[1.2.3.4 . tcp . 443 comment \"allow[0] host x\"\n\t]");
    }

    #[test]
    fn safe_filter_is_gone_and_undefined_is_an_error() {
        assert!(render("{{ v | safe }}", "x").is_err());
        assert!(render("{{ nothing }}", "x").is_err());
    }
}
