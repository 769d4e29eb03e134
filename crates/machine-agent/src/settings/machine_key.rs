//! A machine's own key, so a machine can be given a key that acts only for itself instead of
//! the admin key: hex HMAC-SHA256(admin key, machine id), which the Worker recomputes.

use ccr_native::Secret;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// This machine's key: lowercase hex HMAC-SHA256(key = admin key, message = machine id).
pub(crate) fn machine_key(admin_key: &Secret, machine_id: &str) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(admin_key.expose().as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(machine_id.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_key_is_hex_hmac() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            machine_key(&Secret::new("Jefe"), "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
