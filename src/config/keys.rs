//! How a configuration key is declared: once, with its name, type, default and
//! doc, in a [`section!`] block. The block generates the section's struct, its
//! `Default`, and the key table that the file reader, the environment overlay,
//! the unknown-key check and the reference-doc test all read, so that no second
//! list of key names exists anywhere.
//!
//! A key's type says how it is read and what it accepts: [`Seconds`]`<1, 86400>`
//! is a whole number of seconds in that range, a `serde` enum accepts exactly its
//! variants. Rules that span keys or need the outside world (files, other
//! sections) live in each section's `validate`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How a key's value is written, in TOML and in the environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A string (`LINE_AUTH_PROXY__S__K=text`).
    Str,
    /// A whole number, 0 or more.
    Int,
    /// `true` or `false`.
    Bool,
    /// A list of strings (comma-separated in the environment).
    List,
    /// A table of strings keyed by the operator (`LINE_AUTH_PROXY__S__K__ENTRY=text`).
    Map,
    /// A number, with or without a fraction (`0.05`, `1`).
    Number,
}

impl Kind {
    /// Whether a TOML value has this shape (the type of its items included).
    pub fn accepts(self, value: &toml::Value) -> bool {
        match self {
            Kind::Str => value.is_str(),
            Kind::Int => value.as_integer().is_some_and(|n| n >= 0),
            Kind::Bool => value.is_bool(),
            Kind::List => value.as_array().is_some_and(|a| a.iter().all(toml::Value::is_str)),
            Kind::Map => value.as_table().is_some_and(|t| t.values().all(toml::Value::is_str)),
            Kind::Number => value.is_float() || value.is_integer(),
        }
    }

    /// What the problem message says a value of this kind must be.
    pub fn expected(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Int => "a whole number, 0 or more",
            Kind::Bool => "true or false",
            Kind::List => "a list of strings, e.g. [\"1234567890\"]",
            Kind::Map => "a table of strings",
            Kind::Number => "a number, e.g. 0.05",
        }
    }
}

/// A type a configuration key can hold.
pub trait Value: Sized {
    const KIND: Kind;
    /// Reads a value already known to have the shape of [`Self::KIND`]; the
    /// error says what is wrong and what to write instead.
    fn read(value: toml::Value) -> Result<Self, String>;
    /// The value as written in TOML, for the reference documentation.
    fn show(&self) -> String;
    /// What the key accepts beyond its kind (a unit and range, the choices),
    /// as the reference documentation states it.
    fn allowed() -> String {
        String::new()
    }
}

/// One declared key, as the loader and the reference-documentation test see it.
#[derive(Clone, Copy)]
pub struct KeySpec {
    pub name: &'static str,
    pub kind: Kind,
    /// The default, as written in TOML (`none` when unset by default).
    pub default: fn() -> String,
    /// What the key accepts beyond its kind (see [`Value::allowed`]).
    pub allowed: fn() -> String,
}

/// A declared section: what [`section!`] implements.
pub trait Section {
    /// The key path of the section (`server`, `routes[0]` is built by the caller).
    fn path(&self) -> &'static str;
    fn keys(&self) -> &'static [KeySpec];
    /// Sets `key` from `value`; `None` when the section has no such key.
    fn set(&mut self, key: &str, value: toml::Value) -> Option<Result<(), String>>;
}

/// Declares a configuration section: a struct whose every field is a key, with
/// its doc comment and its default (a named constant, or the type's default).
macro_rules! section {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident($path:literal) {
            $(
                $(#[doc = $doc:literal])*
                $key:ident : $ty:ty $(= $default:expr)?
            ),* $(,)?
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Clone, Debug, PartialEq)]
        pub struct $name {
            $( $(#[doc = $doc])* pub $key: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $key: section!(@default $($default)?), )* }
            }
        }

        impl $name {
            /// The keys whose values differ from `other`'s, in declaration order.
            #[allow(dead_code)]
            pub fn changed(&self, other: &Self) -> Vec<&'static str> {
                let mut out = Vec::new();
                $( if self.$key != other.$key { out.push(stringify!($key)); } )*
                out
            }

            pub const KEYS: &'static [$crate::config::keys::KeySpec] = &[$(
                $crate::config::keys::KeySpec {
                    name: stringify!($key),
                    kind: <$ty as $crate::config::keys::Value>::KIND,
                    default: || $crate::config::keys::Value::show(&<$name as Default>::default().$key),
                    allowed: <$ty as $crate::config::keys::Value>::allowed,
                },
            )*];
        }

        impl $crate::config::keys::Section for $name {
            fn path(&self) -> &'static str {
                $path
            }
            fn keys(&self) -> &'static [$crate::config::keys::KeySpec] {
                Self::KEYS
            }
            fn set(&mut self, key: &str, value: toml::Value) -> Option<Result<(), String>> {
                match key {
                    $( stringify!($key) => Some(
                        <$ty as $crate::config::keys::Value>::read(value).map(|v| self.$key = v)
                    ), )*
                    _ => None,
                }
            }
        }
    };
    (@default) => { Default::default() };
    (@default $default:expr) => { ::core::convert::Into::into($default) };
}
pub(crate) use section;

/// A share from 0 to 1 (`otel.sampling_ratio`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ratio(pub f64);

impl From<f64> for Ratio {
    fn from(n: f64) -> Self {
        Self(n)
    }
}

impl Value for Ratio {
    const KIND: Kind = Kind::Number;
    fn read(value: toml::Value) -> Result<Self, String> {
        let n = value.as_float().or_else(|| value.as_integer().map(|n| n as f64));
        match n {
            Some(n) if (0.0..=1.0).contains(&n) => Ok(Self(n)),
            _ => Err("must be a number from 0 to 1".into()),
        }
    }
    fn show(&self) -> String {
        self.0.to_string()
    }
    fn allowed() -> String {
        "0–1".into()
    }
}

/// Implements [`Value`] for `serde` enums of unit variants: the valid values,
/// and the message naming them, come from the enum itself.
macro_rules! choice {
    ($($ty:ty),* $(,)?) => {$(
        impl $crate::config::keys::Value for $ty {
            const KIND: $crate::config::keys::Kind = $crate::config::keys::Kind::Str;
            fn read(value: toml::Value) -> Result<Self, String> {
                <$ty as serde::Deserialize>::deserialize(value).map_err(|e| $crate::config::one_line(&e.to_string()))
            }
            fn show(&self) -> String {
                format!("{:?}", self.as_str())
            }
            fn allowed() -> String {
                $crate::config::variants::<$ty>()
            }
        }
    )*};
}
pub(crate) use choice;

impl Value for String {
    const KIND: Kind = Kind::Str;
    fn read(value: toml::Value) -> Result<Self, String> {
        value.as_str().map(str::to_owned).ok_or_else(|| "must be a string".into())
    }
    fn show(&self) -> String {
        format!("{self:?}")
    }
}

impl Value for PathBuf {
    const KIND: Kind = Kind::Str;
    fn read(value: toml::Value) -> Result<Self, String> {
        match value.as_str() {
            Some("") => Err("must be a path, not empty".into()),
            Some(s) => Ok(PathBuf::from(s)),
            None => Err("must be a path".into()),
        }
    }
    fn show(&self) -> String {
        format!("{:?}", self.display().to_string())
    }
}

impl Value for bool {
    const KIND: Kind = Kind::Bool;
    fn read(value: toml::Value) -> Result<Self, String> {
        value.as_bool().ok_or_else(|| "must be true or false".into())
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl Value for Vec<String> {
    const KIND: Kind = Kind::List;
    fn read(value: toml::Value) -> Result<Self, String> {
        let list = value.as_array().ok_or("must be a list of strings")?;
        list.iter().map(|v| v.as_str().map(str::to_owned).ok_or_else(|| "must be a list of strings".into())).collect()
    }
    fn show(&self) -> String {
        format!("[{}]", self.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", "))
    }
}

impl Value for BTreeMap<String, PathBuf> {
    const KIND: Kind = Kind::Map;
    fn read(value: toml::Value) -> Result<Self, String> {
        let table = value.as_table().ok_or("must be a table of paths")?;
        table.iter().map(|(k, v)| Ok((k.clone(), PathBuf::read(v.clone())?))).collect()
    }
    fn show(&self) -> String {
        if self.is_empty() { "none".into() } else { format!("{} entries", self.len()) }
    }
}

impl<T: Value> Value for Option<T> {
    const KIND: Kind = T::KIND;
    fn read(value: toml::Value) -> Result<Self, String> {
        T::read(value).map(Some)
    }
    fn show(&self) -> String {
        self.as_ref().map_or_else(|| "none".into(), T::show)
    }
    fn allowed() -> String {
        T::allowed()
    }
}

impl Value for SocketAddr {
    const KIND: Kind = Kind::Str;
    fn read(value: toml::Value) -> Result<Self, String> {
        let s = value.as_str().unwrap_or_default();
        s.parse().map_err(|_| format!("{s:?} is not an IP:port address, e.g. \"0.0.0.0:8080\" or \"[::]:8080\""))
    }
    fn show(&self) -> String {
        format!("\"{self}\"")
    }
}

/// Declares a whole-number type with a unit and an inclusive range, so that the
/// key's declaration says both and the reader enforces them.
macro_rules! unit {
    ($(#[doc = $doc:literal])* $name:ident, $unit:literal) => {
        $(#[doc = $doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name<const MIN: u64, const MAX: u64>(pub u64);

        impl<const MIN: u64, const MAX: u64> From<u64> for $name<MIN, MAX> {
            fn from(n: u64) -> Self {
                Self(n)
            }
        }

        impl<const MIN: u64, const MAX: u64> Value for $name<MIN, MAX> {
            const KIND: Kind = Kind::Int;
            fn read(value: toml::Value) -> Result<Self, String> {
                match value.as_integer() {
                    Some(n) if (MIN as i64..=MAX as i64).contains(&n) => Ok(Self(n as u64)),
                    _ if $unit.is_empty() => Err(format!("must be between {MIN} and {MAX}")),
                    _ => Err(format!("must be between {MIN} and {MAX} {}", $unit)),
                }
            }
            fn show(&self) -> String {
                self.0.to_string()
            }
            fn allowed() -> String {
                if $unit.is_empty() { format!("{MIN}–{MAX}") } else { format!("{}, {MIN}–{MAX}", $unit) }
            }
        }
    };
}

unit!(
    /// Whole seconds within `MIN..=MAX`.
    Seconds,
    "seconds"
);
unit!(
    /// Whole milliseconds within `MIN..=MAX`.
    Millis,
    "milliseconds"
);
unit!(
    /// A size in bytes within `MIN..=MAX`.
    Bytes,
    "bytes"
);
unit!(
    /// A count (connections, entries, calls) within `MIN..=MAX`.
    Count,
    ""
);

impl<const MIN: u64, const MAX: u64> Seconds<MIN, MAX> {
    pub fn duration(self) -> Duration {
        Duration::from_secs(self.0)
    }
}

impl<const MIN: u64, const MAX: u64> Millis<MIN, MAX> {
    pub fn duration(self) -> Duration {
        Duration::from_millis(self.0)
    }
}

impl<const MIN: u64, const MAX: u64> Bytes<MIN, MAX> {
    pub fn get(self) -> usize {
        self.0 as usize
    }
}

impl<const MIN: u64, const MAX: u64> Count<MIN, MAX> {
    pub fn get(self) -> usize {
        self.0 as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_enforce_their_range_and_say_so() {
        assert_eq!(Seconds::<1, 60>::read(toml::Value::Integer(60)), Ok(Seconds(60)));
        assert_eq!(Seconds::<1, 60>::read(toml::Value::Integer(0)), Err("must be between 1 and 60 seconds".into()));
        assert_eq!(
            Millis::<1, 10>::read(toml::Value::Integer(11)),
            Err("must be between 1 and 10 milliseconds".into())
        );
        assert_eq!(Seconds::<1, 60>::allowed(), "seconds, 1–60");
        assert_eq!(Millis::<1, 10>(5).duration(), Duration::from_millis(5));
    }

    #[test]
    fn kinds_check_the_shape_of_items_too() {
        assert!(Kind::List.accepts(&toml::Value::Array(vec!["a".into()])));
        assert!(!Kind::List.accepts(&toml::Value::Array(vec![toml::Value::Integer(1)])));
        assert!(!Kind::Int.accepts(&toml::Value::Integer(-1)));
        assert!(Kind::Map.accepts(&toml::Value::Table(toml::Table::new())));
    }
}
