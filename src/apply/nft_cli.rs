//! Applying through the `nft` binary: the rendered script in one transaction, the
//! table read back as JSON and compared with the ruleset.

use serde_json::Value;

use super::{ApplyError, run_tool, run_tool_on};
use crate::backend::nft;
use crate::ir::{ChainId, Ruleset};

const FAMILY: &str = "inet";
const TABLE: &str = "egressc";

/// Renders and loads the ruleset (`nft -f -`), then reads it back.
pub fn apply(ruleset: &Ruleset) -> Result<(), ApplyError> {
    let script = nft::render(ruleset)?;
    run_tool_on("nft", &["-f"], &script)?;
    verify(ruleset)
}

/// `nft list table inet egressc`, or `None` if the table does not exist.
pub fn list_table() -> Result<Option<String>, ApplyError> {
    if !exists()? {
        return Ok(None);
    }
    run_tool("nft", &["list", "table", FAMILY, TABLE]).map(Some)
}

/// Whether `table inet egressc` exists.
pub fn exists() -> Result<bool, ApplyError> {
    let tables = run_tool("nft", &["list", "tables", FAMILY])?;
    Ok(tables
        .lines()
        .any(|l| l.trim() == format!("table {FAMILY} {TABLE}")))
}

/// Puts back a listed table, or removes ours if there was none.
pub fn restore(table: Option<&str>) -> Result<(), ApplyError> {
    match table {
        // The listing is nft syntax; declaring and deleting first replaces the
        // current table in the same transaction.
        Some(text) => {
            let script = format!("table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n{text}");
            run_tool_on("nft", &["-f"], &script).map(|_| ())
        }
        None => remove().map(|_| ()),
    }
}

/// Deletes `table inet egressc` if it exists.
pub fn remove() -> Result<bool, ApplyError> {
    if !exists()? {
        return Ok(false);
    }
    run_tool("nft", &["delete", "table", FAMILY, TABLE])?;
    Ok(true)
}

/// The table as nft's JSON listing.
pub fn list_json() -> Result<Value, ApplyError> {
    let text = run_tool("nft", &["-j", "list", "table", FAMILY, TABLE])?;
    serde_json::from_str(&text).map_err(|e| ApplyError::Listing(e.to_string()))
}

/// Compares the kernel's table with the ruleset: every set with its element
/// count, every chain with its rule count and rule comments in order.
pub fn verify(ruleset: &Ruleset) -> Result<(), ApplyError> {
    let listing = list_json()?;
    let items = listing["nftables"]
        .as_array()
        .ok_or_else(|| ApplyError::Listing("no `nftables` array".into()))?;
    for set in &ruleset.sets {
        let found = items
            .iter()
            .find(|i| i["set"]["name"] == set.name)
            .ok_or_else(|| ApplyError::ReadBack(format!("set {} is missing", set.name)))?;
        let count = found["set"]["elem"].as_array().map_or(0, |e| e.len());
        if count != set.elements.len() {
            return Err(ApplyError::ReadBack(format!(
                "set {} has {count} elements, expected {}",
                set.name,
                set.elements.len()
            )));
        }
    }
    for chain in [ChainId::Output, ChainId::Deny] {
        let name = chain.to_string();
        let comments: Vec<&str> = items
            .iter()
            .filter(|i| i["rule"]["chain"] == name.as_str())
            .map(|i| i["rule"]["comment"].as_str().unwrap_or(""))
            .collect();
        let expected: Vec<String> = ruleset
            .chain(chain)
            .iter()
            .map(|r| crate::backend::fit_comment(&r.comment))
            .collect();
        if comments != expected {
            return Err(ApplyError::ReadBack(format!(
                "chain {name} holds {} rules {comments:?}, expected {expected:?}",
                comments.len()
            )));
        }
    }
    Ok(())
}
