//! The one reader of the services' environment variables, so all three read them alike:
//!
//! - an empty value is the same as an unset one (a `FOO=` left in a unit file means "default");
//! - every bad variable is collected, and the error names each with what was wrong, so an operator
//!   fixes them all at once instead of one per restart;
//! - values are read through a lookup function (`std::env::var` in `main`, a map in tests), the
//!   model of linkerd's `env.rs`.

use std::fmt;

/// One variable that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarError {
    pub var: &'static str,
    pub problem: String,
}

/// Every variable that cannot be used, in the order they were read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub errors: Vec<VarError>,
}

impl ConfigError {
    /// One bad variable.
    pub fn one(var: &'static str, problem: impl Into<String>) -> Self {
        Self {
            errors: vec![VarError {
                var,
                problem: problem.into(),
            }],
        }
    }

    /// The names of the bad variables.
    pub fn vars(&self) -> Vec<&'static str> {
        self.errors.iter().map(|e| e.var).collect()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", e.var, e.problem)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads variables through a lookup, collecting what is wrong with them.
pub struct Env<F> {
    get: F,
    errors: Vec<VarError>,
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    pub fn new(get: F) -> Self {
        Self {
            get,
            errors: Vec::new(),
        }
    }

    /// The value of `var`, unless it is unset or empty.
    pub fn string(&mut self, var: &'static str) -> Option<String> {
        (self.get)(var).filter(|v| !v.trim().is_empty())
    }

    /// A positive integer.
    pub fn positive(&mut self, var: &'static str) -> Option<u64> {
        self.parse(var, "a positive integer", |v| {
            v.parse::<u64>().ok().filter(|n| *n > 0)
        })
    }

    /// An integer, zero allowed.
    pub fn unsigned(&mut self, var: &'static str) -> Option<u64> {
        self.parse(var, "a whole number", |v| v.parse::<u64>().ok())
    }

    /// `1`/`true`/`yes`/`on` or `0`/`false`/`no`/`off`.
    pub fn flag(&mut self, var: &'static str) -> Option<bool> {
        self.parse(var, "true or false", |v| {
            match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Some(true),
                "0" | "false" | "no" | "off" => Some(false),
                _ => None,
            }
        })
    }

    /// The index in `modes` of the mode `var` names.
    pub fn mode(&mut self, var: &'static str, modes: &[&str]) -> Option<usize> {
        let expected = modes.join(" or ");
        self.parse(var, &expected, |v| modes.iter().position(|m| *m == v))
    }

    /// `var` read with `parse`, which says what is wrong with a bad value.
    pub fn with<T>(
        &mut self,
        var: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let v = self.string(var)?;
        match parse(v.trim()) {
            Ok(t) => Some(t),
            Err(problem) => {
                self.invalid(var, problem);
                None
            }
        }
    }

    /// Records that `var` cannot be used (for checks that span variables).
    pub fn invalid(&mut self, var: &'static str, problem: impl Into<String>) {
        self.errors.push(VarError {
            var,
            problem: problem.into(),
        });
    }

    /// `value` if every variable read was good, else all the problems.
    pub fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError {
                errors: self.errors,
            })
        }
    }

    fn parse<T>(
        &mut self,
        var: &'static str,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        self.with(var, |v| {
            parse(v).ok_or_else(|| format!("expected {expected}, got {v:?}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Env<impl Fn(&str) -> Option<String>> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::new(move |k: &str| m.get(k).cloned())
    }

    // Proves every bad variable is reported at once, each with its name, and good ones are read.
    #[test]
    fn every_bad_variable_is_reported() {
        let mut e = env(&[
            ("A", "7"),
            ("B", "0"),
            ("C", "x"),
            ("D", "on"),
            ("M", "three"),
        ]);
        assert_eq!(e.positive("A"), Some(7));
        assert_eq!(e.positive("B"), None);
        assert_eq!(e.positive("C"), None);
        assert_eq!(e.flag("D"), Some(true));
        assert_eq!(e.mode("M", &["one", "two"]), None);
        let err = e.finish(()).unwrap_err();
        assert_eq!(err.vars(), ["B", "C", "M"]);
        assert_eq!(
            err.to_string(),
            "B: expected a positive integer, got \"0\"; C: expected a positive integer, got \"x\"; M: expected one or two, got \"three\""
        );
    }

    // Proves an empty value is unset for every kind of variable, and good values pass.
    #[test]
    fn empty_is_unset() {
        let mut e = env(&[("A", ""), ("B", "  "), ("C", " 5 "), ("F", "")]);
        assert_eq!(e.string("A"), None);
        assert_eq!(e.positive("B"), None);
        assert_eq!(e.unsigned("C"), Some(5));
        assert_eq!(e.flag("F"), None);
        assert_eq!(e.string("MISSING"), None);
        assert_eq!(e.finish(1), Ok(1));
    }
}
