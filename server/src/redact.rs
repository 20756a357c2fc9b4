//! What the binary prints of its input, with every secret taken out:
//! tokens ([`keygate::redact_tokens`]), and the password of a database URL
//! or a `password=` setting, which a misplaced argument may carry.

/// What stands for a secret taken out, as in [`keygate::redact_tokens`].
const REDACTED: &str = "…";

/// `text` with tokens and database passwords replaced by `…`.
pub fn secrets(text: &str) -> String {
    let text = keygate::redact_tokens(text);
    password_settings(&url_passwords(&text))
}

/// Each `postgres://` or `postgresql://` URL with the password in its
/// userinfo taken out. The URL runs to whitespace or the next URL, and its
/// userinfo to its last `@`, since a password may hold `@`, `/` or `?`.
fn url_passwords(text: &str) -> String {
    // ASCII lowercasing keeps every byte index.
    let lower = text.to_ascii_lowercase();
    let next_url = |from: usize| {
        ["postgres://", "postgresql://"]
            .into_iter()
            .filter_map(|scheme| {
                let at = lower.get(from..)?.find(scheme)?;
                Some((from + at, from + at + scheme.len()))
            })
            .min()
    };
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut from = 0;
    while let Some((_, authority)) = next_url(from) {
        let rest = text.get(authority..).unwrap_or_default();
        let mut len = rest.find(char::is_whitespace).unwrap_or(rest.len());
        if let Some((next, _)) = next_url(authority) {
            len = len.min(next - authority);
        }
        let url = rest.get(..len).unwrap_or_default();
        let password = url
            .rfind('@')
            .and_then(|at| Some((url.get(..at)?.find(':')? + 1, at)));
        if let Some((start, end)) = password.filter(|(start, end)| start < end) {
            out.push_str(text.get(copied..authority + start).unwrap_or_default());
            out.push_str(REDACTED);
            copied = authority + end;
        }
        from = authority + len;
    }
    out.push_str(text.get(copied..).unwrap_or_default());
    out
}

/// Each `password=VALUE` (any case, so `PGPASSWORD=` too; spaces around
/// `=` as libpq allows) with its value taken out: a quoted value to its
/// closing quote, a bare one to whitespace, `&` or a quote.
fn password_settings(text: &str) -> String {
    const KEY: &str = "password";
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = lower.get(from..).and_then(|s| s.find(KEY)) {
        let after_key = from + found + KEY.len();
        let rest = text.get(after_key..).unwrap_or_default();
        let trimmed = rest.trim_start();
        let Some(value) = trimmed.strip_prefix('=') else {
            from = after_key;
            continue;
        };
        let value = value.trim_start();
        let start = text.len() - value.len();
        let len = if let Some(quoted) = value.strip_prefix('\'') {
            // libpq's quoting: `\` escapes the next character.
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '\'' => {
                        end = i + 1;
                        break;
                    }
                    _ => {}
                }
            }
            1 + end
        } else {
            value
                .find(|c: char| c.is_whitespace() || matches!(c, '&' | '\'' | '"' | '`'))
                .unwrap_or(value.len())
        };
        if len > 0 {
            out.push_str(text.get(copied..start).unwrap_or_default());
            out.push_str(REDACTED);
            copied = start + len;
        }
        // Past the value; an empty one at an ASCII byte (or the end).
        from = start + len.max(1);
    }
    out.push_str(text.get(copied..).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_taken_out() {
        assert_eq!(
            secrets("unexpected argument 'postgres://u:S3CRETPW2@h/db' found"),
            "unexpected argument 'postgres://u:…@h/db' found"
        );
        assert_eq!(
            secrets("invalid value 'postgresql://u:S3C@RET/P?W5@h:5432/db?x=1' for"),
            "invalid value 'postgresql://u:…@h:5432/db?x=1' for"
        );
        assert_eq!(
            secrets("POSTGRES://u:a@h and postgres://v:b@k"),
            "POSTGRES://u:…@h and postgres://v:…@k"
        );
        // No password: nothing to take out.
        for kept in [
            "`postgres://kg@db:5432/keys` to `postgres://kg@db:5433/keys`",
            "postgres://h:5432/db?x=1 user@host",
            "postgres://",
        ] {
            assert_eq!(secrets(kept), kept);
        }
    }

    #[test]
    fn password_settings_are_taken_out() {
        assert_eq!(
            secrets("'host=h password=S3CRET dbname=d'"),
            "'host=h password=… dbname=d'"
        );
        assert_eq!(
            secrets("host=h password = 'it\\'s a secret' dbname=d"),
            "host=h password = … dbname=d"
        );
        assert_eq!(
            secrets("postgres://u@h/db?password=s3cret&sslmode=require"),
            "postgres://u@h/db?password=…&sslmode=require"
        );
        assert_eq!(secrets("PGPASSWORD=hunter2 x"), "PGPASSWORD=… x");
        assert_eq!(
            secrets("password: no; password='"),
            "password: no; password=…"
        );
        assert_eq!(secrets("password="), "password=");
    }
}
