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
                let text = response.text().await.unwrap_or_default();
                let snippet: String = text.chars().take(200).collect();
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
}
