//! Tokens any member can check on its own: the user, the auth store revision it was
//! issued at and when it expires, signed with HMAC-SHA256 under the auth store's
//! replicated key. A token from before the store changed is refused as old (etcd's
//! "revision of auth store is old"; clients authenticate again), as is an expired one.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub user: String,
    pub revision: u64,
    pub expires_unix_ms: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token this cluster signed, or one past its time.
    Invalid,
}

fn payload(claims: &Claims) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(claims.user.as_bytes()),
        claims.revision,
        claims.expires_unix_ms
    )
}

pub fn issue(key: &[u8], claims: &Claims) -> String {
    let payload = payload(claims);
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), payload.as_bytes());
    format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// The claims of `token` if `key` signed it and it has not expired at `now_unix_ms`.
pub fn verify(key: &[u8], token: &str, now_unix_ms: u64) -> Result<Claims, TokenError> {
    let (payload, tag) = token.rsplit_once('.').ok_or(TokenError::Invalid)?;
    let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| TokenError::Invalid)?;
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, key), payload.as_bytes(), &tag).map_err(|_| TokenError::Invalid)?;
    let mut parts = payload.split('.');
    let (Some(user), Some(revision), Some(expires), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Invalid);
    };
    let user = URL_SAFE_NO_PAD.decode(user).map_err(|_| TokenError::Invalid)?;
    let claims = Claims {
        user: String::from_utf8(user).map_err(|_| TokenError::Invalid)?,
        revision: revision.parse().map_err(|_| TokenError::Invalid)?,
        expires_unix_ms: expires.parse().map_err(|_| TokenError::Invalid)?,
    };
    if claims.expires_unix_ms <= now_unix_ms {
        return Err(TokenError::Invalid);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_checks_out_until_it_expires_and_only_under_its_key() {
        let claims = Claims {
            user: "app.reader".into(),
            revision: 7,
            expires_unix_ms: 1_000,
        };
        let token = issue(b"key one", &claims);
        assert_eq!(verify(b"key one", &token, 999), Ok(claims));
        assert_eq!(verify(b"key one", &token, 1_000), Err(TokenError::Invalid));
        assert_eq!(verify(b"key two", &token, 0), Err(TokenError::Invalid));
        let forged = token.replacen("Nw", "OA", 1).replace(".7.", ".8.");
        assert_eq!(verify(b"key one", &forged, 0), Err(TokenError::Invalid));
        assert_eq!(verify(b"key one", "garbage", 0), Err(TokenError::Invalid));
    }
}
