//! What a runtime or transaction-pool refusal means to callers, and the
//! typed [`ChainError`] each becomes.

use subxt::error::{
    DispatchError, ExtrinsicError, StorageError, TransactionEventsError, TransactionProgressError,
    TransactionStatusError,
};

use crate::ChainError;

/// What a runtime error means to callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The hotkey is not registered on the subnet (or not allowed to commit).
    NotRegistered,
    /// A rate limit; try again later.
    RateLimited,
    /// The subnet does not exist.
    NoSuchSubnet,
    /// Anything else.
    Other,
}

/// Classifies a pallet error by its name (names are stable across runtimes, indices are not).
pub fn classify_module_error(error: &str) -> ErrorClass {
    match error {
        "HotKeyNotRegisteredInSubNet"
        | "HotKeyNotRegisteredInNetwork"
        | "HotKeyAccountNotExists"
        | "NotRegistered"
        | "AccountNotAllowedCommit" => ErrorClass::NotRegistered,
        "SubNetworkDoesNotExist" | "SubnetNotExists" | "NetworkDoesNotExist" => {
            ErrorClass::NoSuchSubnet
        }
        _ if error.contains("RateLimit")
            || error.contains("TooFast")
            || error.contains("TooSoon") =>
        {
            ErrorClass::RateLimited
        }
        _ => ErrorClass::Other,
    }
}

/// Classifies a transaction-pool rejection (`Invalid Transaction: Custom error: N`, ...).
/// Codes are subtensor's `CustomTransactionError` (stable since the 2025 runtimes).
pub fn classify_pool_message(message: &str) -> ErrorClass {
    let lower = message.to_ascii_lowercase();
    if lower.contains("rate") && lower.contains("limit") {
        return ErrorClass::RateLimited;
    }
    if let Some(code) = lower
        .split("custom error:")
        .nth(1)
        .and_then(|rest| rest.trim().split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|d| d.parse::<u16>().ok())
    {
        return match code {
            6 | 12 => ErrorClass::RateLimited,
            3 => ErrorClass::NoSuchSubnet,
            4 | 10 => ErrorClass::NotRegistered,
            _ => ErrorClass::Other,
        };
    }
    ErrorClass::Other
}

/// Who a transaction was for, to build typed errors.
#[derive(Clone, Copy)]
pub(super) struct TxContext<'a> {
    pub(super) what: &'a str,
    pub(super) hotkey: &'a str,
    pub(super) netuid: u16,
}

impl TxContext<'_> {
    pub(super) fn error(&self, class: ErrorClass, detail: String) -> ChainError {
        match class {
            ErrorClass::NotRegistered => ChainError::NotRegistered {
                hotkey: self.hotkey.to_string(),
                netuid: self.netuid,
            },
            ErrorClass::RateLimited => ChainError::RateLimited(format!("{}: {detail}", self.what)),
            ErrorClass::NoSuchSubnet => ChainError::NoSuchSubnet(self.netuid),
            ErrorClass::Other => ChainError::Rejected(format!("{} failed: {detail}", self.what)),
        }
    }

    pub(super) fn dispatch(&self, e: &DispatchError) -> ChainError {
        if let DispatchError::Module(m) = e {
            if let Ok(details) = m.details() {
                let (pallet, name) = (details.pallet.name(), details.variant.name.as_str());
                return self.error(classify_module_error(name), format!("{pallet}::{name}"));
            }
        }
        self.error(ErrorClass::Other, e.to_string())
    }

    pub(super) fn pool(&self, message: &str) -> ChainError {
        self.error(classify_pool_message(message), message.to_string())
    }

    pub(super) fn extrinsic(&self, e: ExtrinsicError) -> ChainError {
        let text = e.to_string();
        match e {
            ExtrinsicError::EncodeError(_)
            | ExtrinsicError::PalletNameNotFound(_)
            | ExtrinsicError::CallNameNotFound { .. } => ChainError::BadResponse(format!(
                "{}: this runtime does not take our call: {text}",
                self.what
            )),
            _ => match classify_pool_message(&text) {
                ErrorClass::Other if looks_like_network(&text) => ChainError::Network(text),
                class => self.error(class, text),
            },
        }
    }

    pub(super) fn progress(&self, e: TransactionProgressError) -> ChainError {
        match e {
            TransactionProgressError::TransactionStatusError(
                TransactionStatusError::Invalid(m)
                | TransactionStatusError::Error(m)
                | TransactionStatusError::Dropped(m),
            ) => self.pool(&m),
            other => ChainError::Network(format!("{}: {other}", self.what)),
        }
    }

    pub(super) fn events(&self, e: TransactionEventsError) -> ChainError {
        match e {
            TransactionEventsError::ExtrinsicFailed(d) => self.dispatch(&d),
            TransactionEventsError::CannotDecodeDispatchError { .. }
            | TransactionEventsError::CannotDecodeEventInBlock { .. } => {
                ChainError::BadResponse(format!("{}: {e}", self.what))
            }
            other => ChainError::Network(format!("{}: {other}", self.what)),
        }
    }
}

fn looks_like_network(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "connection",
        "restart",
        "websocket",
        "transport",
        "closed",
        "i/o",
        "rpc",
    ]
    .iter()
    .any(|w| t.contains(w))
}

pub(super) fn storage_err(what: &str, e: StorageError) -> ChainError {
    match e {
        StorageError::CannotFetchValue(_)
        | StorageError::CannotIterateValues(_)
        | StorageError::StreamFailure(_) => ChainError::Network(format!("{what}: {e}")),
        other => ChainError::BadResponse(format!("{what}: {other}")),
    }
}
