//! Delivery receipts (`protocols/mailbox.md`, delivery receipts): a direct message of kind
//! [`RECEIPT_KIND`] whose body lists the ids of the messages it confirms.

use uuid::Uuid;

use super::envelope::Reject;

/// The kind of a delivery receipt: its body lists the ids of the messages it confirms.
pub const RECEIPT_KIND: &str = "receipt";
/// Most message ids in one delivery receipt.
pub const MAX_RECEIPT_IDS: usize = 256;

/// A receipt body: message ids, hyphenated, separated by commas.
pub fn encode_receipt(ids: &[Uuid]) -> String {
    ids.iter()
        .map(|u| u.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The ids a receipt body lists: 1 to [`MAX_RECEIPT_IDS`] UUIDs, else `malformed`.
pub fn decode_receipt(body: &str) -> Result<Vec<Uuid>, Reject> {
    let ids: Vec<Uuid> = body
        .split(',')
        .map(|s| Uuid::try_parse(s).map_err(|_| Reject::Malformed("bad receipt id".into())))
        .collect::<Result<_, _>>()?;
    if ids.is_empty() || ids.len() > MAX_RECEIPT_IDS {
        return Err(Reject::Malformed("bad receipt length".into()));
    }
    Ok(ids)
}
