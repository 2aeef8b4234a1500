//! Sending one notice: a signed JSON POST to a webhook, or a plain-text e-mail through the configured SMTP
//! relay with `lettre`. Neither follows redirects or waits longer than the configured timeout.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, header::ContentType},
    transport::smtp::authentication::Credentials,
};
use sha2::Sha256;

use crate::config::{Config, SmtpTls};

/// The header carrying the body's signature: `sha256=<hex HMAC-SHA256 of the exact body>`.
pub const SIGNATURE_HEADER: &str = "X-Automa-Signature";

/// At most this much of a failed answer's body is read: a receiver streaming an endless error page costs a
/// bounded read, after which the connection is dropped.
const MAX_ERROR_BODY_BYTES: usize = 4096;
/// Path segments and query values this long or longer are taken for tokens when echoed in an error body.
const MIN_TOKEN_CHARS: usize = 6;

/// What one attempt came to.
#[derive(Debug, Clone)]
pub struct Sent {
    pub ok: bool,
    /// The HTTP status, or the SMTP reply code.
    pub code: Option<i64>,
    pub error: Option<String>,
}

impl Sent {
    fn failed(error: impl Into<String>, code: Option<i64>) -> Sent {
        Sent { ok: false, code, error: Some(error.into()) }
    }
}

/// The signature header's value for `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The first bytes of a response's body; dropping the response afterwards closes its connection.
async fn read_prefix(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(MAX_ERROR_BODY_BYTES - body.len())]),
            _ => break,
        }
    }
    body
}

/// `text` with the URL's path and query taken out, whole or in pieces, raw or decoded: receivers often echo
/// the request path, and a webhook URL's path is often its token.
pub fn redact(url: &str, text: &str) -> String {
    let Ok(url) = reqwest::Url::parse(url) else { return text.to_owned() };
    let mut secrets: Vec<String> = vec![url.path().to_owned()];
    secrets.extend(url.query().map(str::to_owned));
    secrets.extend(url.path_segments().into_iter().flatten().map(str::to_owned));
    secrets.extend(url.query_pairs().map(|(_, value)| value.into_owned()));
    let decoded: Vec<String> = secrets.iter().filter_map(|piece| percent_decode(piece)).collect();
    secrets.extend(decoded);
    secrets.retain(|piece| piece.chars().count() >= MIN_TOKEN_CHARS);
    // Longest first, so a whole path goes before the segments inside it.
    secrets.sort_by_key(|piece| std::cmp::Reverse(piece.len()));
    let mut text = text.to_owned();
    for piece in secrets {
        text = text.replace(&piece, "[redacted]");
    }
    text
}

fn percent_decode(text: &str) -> Option<String> {
    let decoded: String =
        form_urlencoded::parse(format!("x={}", text.replace('+', "%2B").replace('&', "%26")).as_bytes())
            .next()
            .map(|(_, value)| value.into_owned())?;
    (decoded != text).then_some(decoded)
}

pub struct Senders {
    http: reqwest::Client,
    smtp: Option<Smtp>,
}

struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Senders {
    pub fn new(config: &Config) -> anyhow::Result<Senders> {
        let timeout = Duration::from_secs(config.notification_timeout_seconds.max(1));
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("automa/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let smtp = match &config.smtp_host {
            Some(host) => {
                if config.smtp_tls == SmtpTls::None && config.smtp_username.is_some() && !is_loopback(host) {
                    anyhow::bail!(
                        "AUTOMA_SMTP_TLS=none would send the SMTP password in clear to {host}: use starttls or tls, \
                         or a relay on this host"
                    );
                }
                let builder = match config.smtp_tls {
                    SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)?.port(587),
                    SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)?.port(465),
                    SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host).port(25),
                };
                let mut builder = builder.timeout(Some(timeout));
                if let Some(port) = config.smtp_port {
                    builder = builder.port(port);
                }
                if let Some(username) = &config.smtp_username {
                    let password = config.smtp_password.as_ref().map(|p| p.expose().to_owned()).unwrap_or_default();
                    builder = builder.credentials(Credentials::new(username.clone(), password));
                }
                let from = config
                    .smtp_from
                    .parse()
                    .map_err(|error| anyhow::anyhow!("AUTOMA_SMTP_FROM is not an e-mail address: {error}"))?;
                Some(Smtp { transport: builder.build(), from })
            }
            None => None,
        };
        Ok(Senders { http, smtp })
    }

    pub fn has_smtp(&self) -> bool {
        self.smtp.is_some()
    }

    /// POSTs `body` to `url`, signed with `secret`. Only a 2xx answer counts as delivered; a redirect is
    /// reported, not followed.
    pub async fn webhook(&self, url: &str, secret: &str, event: &str, delivery: Option<i64>, body: Vec<u8>) -> Sent {
        let mut request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature(secret, &body))
            .header("X-Automa-Event", event);
        if let Some(id) = delivery {
            request = request.header("X-Automa-Delivery", id.to_string());
        }
        match request.body(body).send().await {
            Ok(response) => {
                let status = response.status();
                let code = Some(i64::from(status.as_u16()));
                if status.is_success() {
                    return Sent { ok: true, code, error: None };
                }
                let body = read_prefix(response).await;
                let snippet: String = redact(url, &String::from_utf8_lossy(&body)).chars().take(200).collect();
                let error = if snippet.trim().is_empty() {
                    format!("HTTP {status}")
                } else {
                    format!("HTTP {status}: {}", snippet.trim())
                };
                Sent::failed(error, code)
            }
            // The URL may carry a token in its path: errors are reported without it.
            Err(error) => Sent::failed(error.without_url().to_string(), None),
        }
    }

    /// Sends a plain-text e-mail to `recipients` through the relay.
    pub async fn email(&self, recipients: &[String], subject: &str, text: String) -> Sent {
        let Some(smtp) = &self.smtp else {
            return Sent::failed("no SMTP relay is configured (AUTOMA_SMTP_HOST)", None);
        };
        let mut message = Message::builder().from(smtp.from.clone()).subject(subject).header(ContentType::TEXT_PLAIN);
        for recipient in recipients {
            match recipient.parse::<Mailbox>() {
                Ok(mailbox) => message = message.to(mailbox),
                Err(error) => return Sent::failed(format!("recipient '{recipient}': {error}"), None),
            }
        }
        let message = match message.body(text) {
            Ok(message) => message,
            Err(error) => return Sent::failed(format!("cannot build the message: {error}"), None),
        };
        match smtp.transport.send(message).await {
            Ok(response) => Sent { ok: true, code: response.code().to_string().parse().ok(), error: None },
            Err(error) => {
                let code = error.status().and_then(|code| code.to_string().parse().ok());
                Sent::failed(format!("SMTP: {error}"), code)
            }
        }
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_a_known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn smtp_credentials_go_in_clear_only_to_this_host() {
        let config = |host: &str| Config {
            smtp_host: Some(host.into()),
            smtp_tls: SmtpTls::None,
            smtp_username: Some("relay-user".into()),
            ..Config::default()
        };
        let refused = Senders::new(&config("smtp.example.com")).err().expect("refused");
        assert!(refused.to_string().contains("in clear"), "{refused}");
        for host in ["localhost", "127.0.0.1", "::1"] {
            assert!(Senders::new(&config(host)).is_ok(), "{host}");
        }
        let tls = Config { smtp_tls: SmtpTls::Starttls, ..config("smtp.example.com") };
        assert!(Senders::new(&tls).is_ok());
    }

    #[test]
    fn echoed_paths_and_tokens_are_redacted() {
        let url = "https://hooks.example.com/services/T0/B1/abc%2Fdef-token?key=query-secret";
        let text =
            "no route /services/T0/B1/abc/def-token; token abc%2Fdef-token, key query-secret, at hooks.example.com";
        let redacted = redact(url, text);
        assert!(!redacted.contains("def-token") && !redacted.contains("query-secret"), "{redacted}");
        assert!(redacted.contains("hooks.example.com"), "{redacted}");
    }
}
