//! The subscribe message for one notification, with no I/O: the template's data fields filled
//! from the chat message, each value scrubbed of control characters and cut to WeChat's limit for
//! its key's type (a `thing` holds at most 20 characters, a Chinese character counting as one),
//! and the page that opens the conversation.

use serde_json::{Value, json};

use crate::config::{FieldSource, Template};

/// What a notification tells of.
pub struct About<'a> {
    pub sender: &'a str,
    pub text: &'a str,
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
    /// The group's name for a mention; `None` for a direct message.
    pub group_name: Option<&'a str>,
}

/// The most characters WeChat accepts in a value of a key of this type (`thing1` is a `thing`).
pub fn limit_of(key: &str, value: &str) -> Option<usize> {
    let kind = key.trim_end_matches(|c: char| c.is_ascii_digit());
    match kind {
        "thing" => Some(20),
        "character_string" | "number" | "letter" => Some(32),
        "phrase" => Some(5),
        "symbol" => Some(5),
        "phone_number" => Some(17),
        "car_number" => Some(8),
        // 10 Chinese characters, or 20 letters.
        "name" => Some(if value.is_ascii() { 20 } else { 10 }),
        // Formatted values (`time`, `date`, `amount`) are made to fit by whoever fills them.
        _ => None,
    }
}

/// `value` without control characters (newlines become spaces) and cut to `max` characters, the
/// last of them `…` when anything was cut.
pub fn cut(value: &str, max: Option<usize>) -> String {
    let clean: String = value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let clean = clean.trim();
    match max {
        Some(max) if clean.chars().count() > max => {
            let mut out: String = clean.chars().take(max.saturating_sub(1)).collect();
            out.push('…');
            out
        }
        _ => clean.to_owned(),
    }
}

/// `YYYY-MM-DD HH:MM` in China Standard Time (UTC+8, no daylight saving), the format WeChat's
/// `time` values take.
pub fn china_time(ts_ms: u64) -> String {
    let secs = ts_ms / 1000 + 8 * 3600;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let (y, m, d) = civil_from_days(days);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Howard Hinnant's days-to-civil, for dates after 1970.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The template's `data` object.
pub fn data(template: &Template, about: &About<'_>) -> Value {
    let mut out = serde_json::Map::new();
    for (key, source) in &template.fields {
        let raw = match source {
            FieldSource::Sender => about.sender.to_owned(),
            FieldSource::Text => about.text.to_owned(),
            FieldSource::Time => china_time(about.ts),
            FieldSource::Conversation => about.group_name.unwrap_or(about.sender).to_owned(),
        };
        out.insert(
            key.clone(),
            json!({"value": cut(&raw, limit_of(key, &raw))}),
        );
    }
    Value::Object(out)
}

/// The page a notification opens: `<page>?with=<sender>` for a direct message,
/// `<page>?group=<group>` for a mention.
pub fn page(base: &str, sender: &str, group: Option<&str>) -> String {
    match group {
        Some(g) => format!("{base}?group={g}"),
        None => format!("{base}?with={sender}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NotifyKind, parse_fields};

    #[test]
    fn values_are_cut_to_their_keys_limits_counting_characters() {
        let long = "你好".repeat(15);
        let cut20 = cut(&long, limit_of("thing2", &long));
        assert_eq!(cut20.chars().count(), 20);
        assert!(cut20.ends_with('…'));
        assert_eq!(cut("短消息", limit_of("thing2", "短消息")), "短消息");
        assert_eq!(cut("a\nb\tc", Some(20)), "a b c");
        assert_eq!(limit_of("name1", "张三"), Some(10));
        assert_eq!(limit_of("name1", "alice"), Some(20));
        assert_eq!(limit_of("time3", "x"), None);
        assert_eq!(
            cut(&"x".repeat(40), limit_of("character_string7", ""))
                .chars()
                .count(),
            32
        );
    }

    #[test]
    fn time_is_china_standard_time() {
        // 2026-12-04 16:00:00 UTC is midnight past in Beijing.
        assert_eq!(china_time(1_796_400_000_000), "2026-12-05 00:00");
        assert_eq!(china_time(0), "1970-01-01 08:00");
        assert_eq!(china_time(951_782_400_000), "2000-02-29 08:00");
    }

    #[test]
    fn data_follows_the_mapping() {
        let t = Template {
            kind: NotifyKind::Mention,
            id: "t".into(),
            fields: parse_fields("thing1=conversation,thing2=text,time3=time,thing4=sender")
                .unwrap(),
        };
        let d = data(
            &t,
            &About {
                sender: "alice",
                text: "这是一条很长很长很长很长很长很长很长的消息",
                ts: 0,
                group_name: Some("项目组"),
            },
        );
        assert_eq!(d["thing1"]["value"], "项目组");
        assert_eq!(d["thing2"]["value"].as_str().unwrap().chars().count(), 20);
        assert_eq!(d["time3"]["value"], "1970-01-01 08:00");
        assert_eq!(d["thing4"]["value"], "alice");
        assert_eq!(
            page("pages/chat/chat", "alice", Some("g1")),
            "pages/chat/chat?group=g1"
        );
        assert_eq!(
            page("pages/chat/chat", "alice", None),
            "pages/chat/chat?with=alice"
        );
    }
}
