//! clap value parsers for the worker's settings. Each parser knows its bounds, and a bad value
//! becomes one line naming the flag and its env var, read from the argument itself: names and
//! defaults are written once, in the `#[arg]` attributes.

use std::ffi::OsStr;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::{Arg, Command, ValueEnum};

use super::ConfigError;

/// An optional setting: unset when absent *or empty* (an env var set to "" means "not set").
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Maybe<T>(pub Option<T>);

impl<T> Maybe<T> {
    pub(crate) fn into_option(self) -> Option<T> {
        self.0
    }
}

/// The flag and env var of `arg`, as they appear in error messages.
pub(crate) fn names(arg: Option<&Arg>) -> (String, String) {
    let flag = arg
        .and_then(Arg::get_long)
        .map(|l| format!("--{l}"))
        .unwrap_or_else(|| "(argument)".into());
    let env = arg
        .and_then(Arg::get_env)
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "(no env var)".into());
    (flag, env)
}

/// A problem with the setting whose field is `id` in the clap arguments `A`, found after parsing
/// (a cross-field check, a missing value): named as the parsers name it.
pub(crate) fn invalid_setting<A: clap::Args>(id: &str, problem: impl Into<String>) -> ConfigError {
    let cmd = A::augment_args(Command::new("queue-worker"));
    let arg = cmd.get_arguments().find(|a| a.get_id() == id);
    let (flag, env) = names(arg);
    ConfigError {
        flag,
        env,
        problem: problem.into(),
    }
}

fn invalid(arg: Option<&Arg>, problem: String) -> clap::Error {
    let (flag, env) = names(arg);
    let e = ConfigError { flag, env, problem };
    clap::Error::raw(ErrorKind::ValueValidation, e.to_string())
}

fn text(value: &OsStr) -> String {
    value.to_string_lossy().into_owned()
}

/// A [`TypedValueParser`] from a function of the value's text.
#[derive(Clone)]
pub(crate) struct Parse<T, F>(F, PhantomData<fn() -> T>);

impl<T, F> TypedValueParser for Parse<T, F>
where
    T: Clone + Send + Sync + 'static,
    F: Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static,
{
    type Value = T;
    fn parse_ref(
        &self,
        _cmd: &Command,
        arg: Option<&Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        (self.0)(&text(value)).map_err(|problem| invalid(arg, problem))
    }
}

/// A parser made from a plain function.
pub(crate) type FnParse<T> = Parse<T, fn(&str) -> Result<T, String>>;

fn parser<T, F>(f: F) -> Parse<T, F>
where
    F: Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static,
{
    Parse(f, PhantomData)
}

/// The same parser for an optional setting: empty means unset.
#[derive(Clone)]
pub(crate) struct Optional<P>(P);

impl<P> TypedValueParser for Optional<P>
where
    P: TypedValueParser,
    P::Value: Clone + Send + Sync + 'static,
{
    type Value = Maybe<P::Value>;
    fn parse_ref(
        &self,
        cmd: &Command,
        arg: Option<&Arg>,
        value: &OsStr,
    ) -> Result<Self::Value, clap::Error> {
        if text(value).trim().is_empty() {
            return Ok(Maybe(None));
        }
        self.0.parse_ref(cmd, arg, value).map(|v| Maybe(Some(v)))
    }
}

/// `p`, for a setting that may be absent or empty.
pub(crate) fn optional<P: TypedValueParser>(p: P) -> Optional<P> {
    Optional(p)
}

/// Parses `10s`, `5m`, `250ms`, `1h 30m`; a bare number is rejected so units are never guessed.
pub(crate) fn duration_text(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw.trim())
        .map_err(|e| format!("\"{raw}\" is not a duration like 10s or 5m ({e})"))
}

/// A duration in `min..=max`, whole multiples of `unit` when given.
pub(crate) fn duration(
    min: Duration,
    max: Duration,
    unit: Option<(Duration, &'static str)>,
) -> Parse<Duration, impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync> {
    parser(move |raw: &str| {
        let d = duration_text(raw)?;
        if d < min || d > max {
            return Err(format!(
                "{raw} is out of range {}..={}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ));
        }
        if let Some((unit, why)) = unit {
            if d.as_nanos() % unit.as_nanos() != 0 {
                return Err(format!("{raw} must be {why}"));
            }
        }
        Ok(d)
    })
}

/// Whole seconds, for what SQS counts in seconds.
pub(crate) const WHOLE_SECONDS: Option<(Duration, &str)> = Some((
    Duration::from_secs(1),
    "whole seconds (SQS counts in seconds)",
));
/// Whole minutes, for what the agent counts in minutes.
pub(crate) const WHOLE_MINUTES: Option<(Duration, &str)> = Some((
    Duration::from_secs(60),
    "whole minutes (the agent counts in minutes)",
));

/// A whole number from `min` to `max`.
fn whole_number(
    min: u64,
    max: u64,
) -> Parse<u64, impl Fn(&str) -> Result<u64, String> + Clone + Send + Sync> {
    parser(move |raw: &str| match raw.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "\"{raw}\" must be a whole number from {min} to {max}"
        )),
    })
}

/// A whole number from 1 to `max`.
pub(crate) fn count(
    max: u64,
) -> Parse<u64, impl Fn(&str) -> Result<u64, String> + Clone + Send + Sync> {
    whole_number(1, max)
}

/// A whole number from 0 to `max`.
pub(crate) fn count_or_zero(
    max: u64,
) -> Parse<u64, impl Fn(&str) -> Result<u64, String> + Clone + Send + Sync> {
    whole_number(0, max)
}

/// Checks an http(s) URL (without a trailing slash).
pub(crate) fn url_text(raw: &str) -> Result<String, String> {
    let url = raw.trim();
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(url.trim_end_matches('/').to_string())
    } else {
        Err(format!("\"{raw}\" is not an http(s) URL"))
    }
}

/// An http(s) URL.
pub(crate) fn url() -> FnParse<String> {
    parser(url_text)
}

/// `host:port`, e.g. 127.0.0.1:9090.
pub(crate) fn addr_text(raw: &str) -> Result<SocketAddr, String> {
    raw.trim()
        .parse()
        .map_err(|_| format!("\"{raw}\" is not an address like 127.0.0.1:9090"))
}

/// A socket address.
pub(crate) fn addr() -> FnParse<SocketAddr> {
    parser(addr_text)
}

/// One of an enum's values, by its kebab-case name.
pub(crate) fn one_of<T: ValueEnum + Clone + Send + Sync + 'static>() -> FnParse<T> {
    parser(|raw: &str| {
        T::from_str(raw.trim(), false).map_err(|_| {
            let names: Vec<String> = T::value_variants()
                .iter()
                .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
                .collect();
            format!("\"{raw}\" is not one of {}", names.join(", "))
        })
    })
}

/// The queue URLs of `COPILOT_TOPIC_QUEUE_URIS` (a JSON object of name to URL), by name.
pub(crate) fn topic_queues() -> FnParse<Vec<String>> {
    parser(|raw: &str| {
        let map: std::collections::BTreeMap<String, String> = serde_json::from_str(raw)
            .map_err(|e| format!("not a JSON object of name to queue URL: {e}"))?;
        map.values().map(|u| url_text(u)).collect()
    })
}

/// The one line of a value error that a parser above made (clap prefixes it with `error: `).
pub(crate) fn value_error_line(e: &clap::Error) -> Option<String> {
    if e.kind() != ErrorKind::ValueValidation {
        return None;
    }
    let text = e.to_string();
    let line = text.lines().next()?.trim();
    Some(line.strip_prefix("error: ").unwrap_or(line).to_string())
}
