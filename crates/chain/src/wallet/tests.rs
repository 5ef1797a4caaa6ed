//! Names that cannot leave the root; truncated `$NACL` data.

use super::*;
use proptest::prelude::*;

proptest! {
    /// Whatever the name, an accepted one is exactly one plain component
    /// directly under the root: no name can leave it.
    #[test]
    fn accepted_names_stay_directly_under_the_root(name in "\\PC{0,12}|[./\\\\a-z]{0,8}") {
        let root = Path::new("/wallets/root");
        for (kind, checked) in [("wallet", SafeName::wallet(&name)), ("hotkey", SafeName::hotkey(&name))] {
            match checked {
                Ok(safe) => {
                    let p = root.join(safe.as_str());
                    prop_assert_eq!(p.parent(), Some(root), "{} {:?}", kind, name);
                    let comps: Vec<_> = Path::new(safe.as_str()).components().collect();
                    prop_assert_eq!(comps.len(), 1);
                    let normal = matches!(comps[0], std::path::Component::Normal(_));
                    prop_assert!(normal, "{:?}", comps);
                    prop_assert!(!name.starts_with('.'));
                }
                Err(e) => {
                    let is_bad_name = matches!(e, WalletError::BadName { .. });
                    prop_assert!(is_bad_name, "{}", e);
                }
            }
        }
    }
}

#[test]
fn truncated_nacl_data_is_malformed_not_a_panic() {
    // Checked before the (slow) key derivation; the tests/ cover real encryption.
    let p = Path::new("x");
    for data in [
        &b"$NACL"[..],
        b"$NACLshort",
        &[b'$', b'N', b'A', b'C', b'L', 0, 0, 0],
    ] {
        assert!(matches!(
            nacl_decrypt(p, data, "pw"),
            Err(WalletError::Malformed { .. })
        ));
    }
    assert_eq!(encryption(b"$NACL..."), Some("NaCl"));
    assert_eq!(encryption(b"{\"a\": 1}"), None);
}
