//! Chat templates: a model's own Jinja template rendered with minijinja the way transformers'
//! `apply_chat_template` renders it with jinja2.
//!
//! What transformers sets up and we mirror: `trim_blocks` and `lstrip_blocks`, the
//! `{% generation %}` tag (a no-op unless assistant masks are requested, so we turn it into a plain
//! block), `strftime_now`, `raise_exception`, Python string methods (`.strip()`, `.replace()`, ...)
//! and Python's `str()` for the `string` filter (so `tool | string` prints `{'name': ...}`).

use minijinja::value::{Serde, Value, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind, syntax::SyntaxConfig};
use serde::Serialize;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// Why a template could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template does not compile.
    #[error("chat template: {0}")]
    Syntax(String),
    /// Rendering failed (including the template's own `raise_exception`).
    #[error("chat template: {0}")]
    Render(String),
}

/// A calendar date and time (UTC) for `strftime_now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    /// Year.
    pub year: i64,
    /// 1..=12
    pub month: u32,
    /// 1..=31
    pub day: u32,
    /// 0..=23
    pub hour: u32,
    /// 0..=59
    pub minute: u32,
    /// 0..=59
    pub second: u32,
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

impl DateTime {
    /// The current time (UTC).
    pub fn now() -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Self::from_unix(secs)
    }

    /// From seconds since the Unix epoch (proleptic Gregorian calendar, UTC).
    pub fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        DateTime {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem / 60 % 60) as u32,
            second: (rem % 60) as u32,
        }
    }

    fn weekday(&self) -> usize {
        // Days since 1970-01-01 (a Thursday), by days_from_civil.
        let (y, m) = if self.month <= 2 {
            (self.year - 1, self.month + 9)
        } else {
            (self.year, self.month - 3)
        };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * i64::from(m) + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        (days + 3).rem_euclid(7) as usize
    }

    /// C `strftime` for the common specifiers (`%d %m %Y %y %B %b %A %a %H %M %S %j %%`).
    pub fn strftime(&self, fmt: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut chars = fmt.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('d') => out += &format!("{:02}", self.day),
                Some('m') => out += &format!("{:02}", self.month),
                Some('Y') => out += &self.year.to_string(),
                Some('y') => out += &format!("{:02}", self.year.rem_euclid(100)),
                Some('B') => out += MONTHS[self.month as usize - 1],
                Some('b') => out += &MONTHS[self.month as usize - 1][..3],
                Some('A') => out += WEEKDAYS[self.weekday()],
                Some('a') => out += &WEEKDAYS[self.weekday()][..3],
                Some('H') => out += &format!("{:02}", self.hour),
                Some('M') => out += &format!("{:02}", self.minute),
                Some('S') => out += &format!("{:02}", self.second),
                Some('%') => out.push('%'),
                other => {
                    return Err(format!(
                        "strftime_now: unsupported format %{}",
                        other.unwrap_or(' ')
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// Rewrite `{% generation %}` / `{% endgeneration %}` (transformers' AssistantTracker extension)
/// into `{% if true %}` / `{% endif %}`, keeping the whitespace-control dashes.
fn strip_generation_tags(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (lead, body) = inner.strip_prefix('-').map_or(("", inner), |b| ("-", b));
        let (body, trail) = body.strip_suffix('-').map_or((body, ""), |b| (b, "-"));
        match body.trim() {
            "generation" => out.push_str(&format!("{{%{lead} if true {trail}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{lead} endif {trail}%}}")),
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Python's `repr()` of a value (what `str()` prints for items inside containers).
fn py_repr(v: &Value, out: &mut String) {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if v.is_true() { "True" } else { "False" }),
        ValueKind::String => {
            let s = v.as_str().unwrap_or_default();
            let q = if s.contains('\'') && !s.contains('"') {
                '"'
            } else {
                '\''
            };
            out.push(q);
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if c == q => {
                        out.push('\\');
                        out.push(c);
                    }
                    c => out.push(c),
                }
            }
            out.push(q);
        }
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, item) in v.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&item, out);
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in v.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&key, out);
                out.push_str(": ");
                py_repr(&v.get_item(&key).unwrap_or_default(), out);
            }
            out.push('}');
        }
        ValueKind::Number if !v.is_integer() => {
            let f: f64 = v.to_string().parse().unwrap_or(f64::NAN);
            if f.fract() == 0.0 && f.abs() < 1e16 {
                out.push_str(&format!("{f:.1}"));
            } else {
                out.push_str(&v.to_string());
            }
        }
        _ => out.push_str(&v.to_string()),
    }
}

/// Python's `str()`: strings as themselves, everything else as `repr()`.
fn py_str(v: Value) -> String {
    if let Some(s) = v.as_str() {
        return s.to_string();
    }
    let mut out = String::new();
    py_repr(&v, &mut out);
    out
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatTemplate")
    }
}

/// What a rendering gets besides the messages.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// End with the assistant header so the model answers.
    pub add_generation_prompt: bool,
    /// SmolLM3's reasoning switch; `None` leaves the template's default.
    pub enable_thinking: Option<bool>,
    /// Extra variables (`xml_tools`, `tools`, ...), as JSON.
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// Pinned clock for `strftime_now` (tests); `None` uses the current time.
    pub now: Option<DateTime>,
    /// `bos_token`, `eos_token` as the tokenizer config names them.
    pub bos_token: Option<String>,
    /// End-of-sequence token text.
    pub eos_token: Option<String>,
}

impl ChatTemplate {
    /// Compile a template source.
    pub fn new(source: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_syntax(
            SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| TemplateError::Syntax(e.to_string()))?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("string", py_str);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<Value, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned("chat", strip_generation_tags(source))
            .map_err(|e| TemplateError::Syntax(e.to_string()))?;
        Ok(ChatTemplate { env })
    }

    /// Render `messages`.
    pub fn render(
        &self,
        messages: &[Message],
        opts: &RenderOptions,
    ) -> Result<String, TemplateError> {
        let now = opts.now.unwrap_or_else(DateTime::now);
        let mut env = self.env.clone();
        env.add_function(
            "strftime_now",
            move |fmt: String| -> Result<String, JinjaError> {
                now.strftime(&fmt)
                    .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e))
            },
        );
        let mut ctx = serde_json::Map::new();
        ctx.insert(
            "messages".into(),
            serde_json::to_value(messages).unwrap_or_default(),
        );
        ctx.insert(
            "add_generation_prompt".into(),
            opts.add_generation_prompt.into(),
        );
        if let Some(t) = opts.enable_thinking {
            ctx.insert("enable_thinking".into(), t.into());
        }
        if let Some(b) = &opts.bos_token {
            ctx.insert("bos_token".into(), b.clone().into());
        }
        if let Some(e) = &opts.eos_token {
            ctx.insert("eos_token".into(), e.clone().into());
        }
        for (k, v) in &opts.extra {
            ctx.insert(k.clone(), v.clone());
        }
        let tmpl = env
            .get_template("chat")
            .map_err(|e| TemplateError::Render(e.to_string()))?;
        tmpl.render(Value::from(Serde(&serde_json::Value::Object(ctx))))
            .map_err(|e| TemplateError::Render(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_and_calendar() {
        // 2026-11-26 12:00:00 UTC is a Thursday.
        let d = DateTime::from_unix(1_795_694_400);
        assert_eq!(
            d,
            DateTime {
                year: 2026,
                month: 11,
                day: 26,
                hour: 12,
                minute: 0,
                second: 0
            }
        );
        assert_eq!(d.strftime("%d %B %Y").as_deref(), Ok("26 November 2026"));
        assert_eq!(
            d.strftime("%a %b %y %H:%M:%S %%").as_deref(),
            Ok("Thu Nov 26 12:00:00 %")
        );
        assert_eq!(
            DateTime::from_unix(0).strftime("%A %Y-%m-%d").as_deref(),
            Ok("Thursday 1970-01-01")
        );
        assert_eq!(
            DateTime::from_unix(951_782_400)
                .strftime("%Y-%m-%d %A")
                .as_deref(),
            Ok("2000-02-29 Tuesday")
        );
        assert!(d.strftime("%Q").is_err());
    }

    #[test]
    fn generation_tags_become_plain_blocks() {
        for (src, want) in [
            (
                "a{% generation %}b{% endgeneration %}c",
                "a{% if true %}b{% endif %}c",
            ),
            (
                "{%- generation -%}x{%- endgeneration %}",
                "{%- if true -%}x{%- endif %}",
            ),
            (
                "{% if x %}{{ y }}{% endif %}",
                "{% if x %}{{ y }}{% endif %}",
            ),
        ] {
            assert_eq!(strip_generation_tags(src), want);
        }
    }

    #[test]
    fn python_str_of_containers() {
        let v = Value::from(Serde(
            serde_json::json!({"a": "it's", "b": [1, 2.0, true, null], "c": {"d": "x\ny"}}),
        ));
        assert_eq!(
            py_str(v),
            r#"{'a': "it's", 'b': [1, 2.0, True, None], 'c': {'d': 'x\ny'}}"#
        );
    }
}
