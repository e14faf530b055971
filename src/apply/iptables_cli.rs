//! Applying through iptables-restore and ip6tables-restore: egressc's own chains,
//! one jump from OUTPUT, nothing else touched.

use super::{ApplyError, run_tool, run_tool_on};
use crate::backend::iptables;
use crate::ir::{self, Ruleset};

const CHAINS: [&str; 2] = ["EGRESSC", "EGRESSC-DENY"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }
    fn save(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }
    fn ir(self) -> ir::Family {
        match self {
            Family::V4 => ir::Family::V4,
            Family::V6 => ir::Family::V6,
        }
    }
}

/// Loads both families. Both texts are dry-run first, so a text the kernel would
/// refuse never gets half loaded; the caller restores the snapshot on any error.
pub fn apply(ruleset: &Ruleset) -> Result<(), ApplyError> {
    let texts = [Family::V4, Family::V6].map(|f| iptables::render(ruleset, f.ir()).map(|t| (f, t)));
    let texts: Vec<(Family, String)> = texts.into_iter().collect::<Result<_, _>>()?;
    for (family, text) in &texts {
        run_tool_on(family.restore(), &["--test", "--noflush"], text)?;
    }
    for (family, text) in &texts {
        run_tool_on(family.restore(), &["--noflush"], text)?;
        hook(*family)?;
    }
    for (family, text) in &texts {
        verify(*family, text)?;
    }
    Ok(())
}

/// Adds the jump from OUTPUT unless it is there already.
fn hook(family: Family) -> Result<(), ApplyError> {
    if run_tool(family.tool(), &["-C", "OUTPUT", "-j", CHAINS[0]]).is_err() {
        run_tool(family.tool(), &["-I", "OUTPUT", "1", "-j", CHAINS[0]])?;
    }
    Ok(())
}

/// egressc's rule lines (`-A EGRESSC…`) from iptables-save, or `None` when the
/// chains do not exist.
pub fn save_chains(family: Family) -> Result<Option<Vec<String>>, ApplyError> {
    let saved = run_tool(family.save(), &["-t", "filter"])?;
    if !saved
        .lines()
        .any(|l| l.starts_with(&format!(":{} ", CHAINS[0])))
    {
        return Ok(None);
    }
    Ok(Some(
        saved
            .lines()
            .filter(|l| CHAINS.iter().any(|c| l.starts_with(&format!("-A {c} "))))
            .map(String::from)
            .collect(),
    ))
}

/// One of egressc's iptables rules with its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountedRule {
    pub chain: String,
    pub comment: String,
    pub packets: u64,
    pub bytes: u64,
}

/// egressc's rules with their counters, or `None` when the chains do not exist.
pub fn save_counted(family: Family) -> Result<Option<Vec<CountedRule>>, ApplyError> {
    let saved = run_tool(family.save(), &["-c", "-t", "filter"])?;
    if !saved
        .lines()
        .any(|l| l.starts_with(&format!(":{} ", CHAINS[0])))
    {
        return Ok(None);
    }
    let mut rules = Vec::new();
    for line in saved.lines() {
        // `[packets:bytes] -A CHAIN …`
        let Some((counts, rule)) = line.strip_prefix('[').and_then(|l| l.split_once("] ")) else {
            continue;
        };
        let Some(rest) = rule.strip_prefix("-A ") else {
            continue;
        };
        let chain = rest.split_whitespace().next().unwrap_or("");
        if !CHAINS.contains(&chain) {
            continue;
        }
        let (packets, bytes) = counts.split_once(':').unwrap_or(("0", "0"));
        let comment = rule
            .split_once("--comment ")
            .map(|(_, c)| comment_value(c))
            .unwrap_or_default();
        rules.push(CountedRule {
            chain: chain.to_string(),
            comment,
            packets: packets.parse().unwrap_or(0),
            bytes: bytes.parse().unwrap_or(0),
        });
    }
    Ok(Some(rules))
}

/// Puts saved chains back (replacing the current ones), or removes ours.
pub fn restore(family: Family, lines: Option<&[String]>) -> Result<(), ApplyError> {
    match lines {
        Some(lines) => {
            let mut text = String::from("*filter\n");
            for chain in CHAINS {
                text.push_str(&format!(":{chain} - [0:0]\n"));
            }
            for line in lines {
                text.push_str(line);
                text.push('\n');
            }
            text.push_str("COMMIT\n");
            run_tool_on(family.restore(), &["--noflush"], &text)?;
            hook(family)
        }
        None => remove(family).map(|_| ()),
    }
}

/// Unhooks and deletes egressc's chains, if they exist.
pub fn remove(family: Family) -> Result<bool, ApplyError> {
    if save_chains(family)?.is_none() {
        return Ok(false);
    }
    let tool = family.tool();
    // Unhook first: from then on nothing reaches the chains being deleted.
    while run_tool(tool, &["-C", "OUTPUT", "-j", CHAINS[0]]).is_ok() {
        run_tool(tool, &["-D", "OUTPUT", "-j", CHAINS[0]])?;
    }
    for chain in CHAINS {
        run_tool(tool, &["-F", chain])?;
    }
    for chain in CHAINS {
        run_tool(tool, &["-X", chain])?;
    }
    Ok(true)
}

/// Compares the loaded chains with the text: the same number of rules per chain,
/// the same comments in the same order, and exactly one jump from OUTPUT.
fn verify(family: Family, text: &str) -> Result<(), ApplyError> {
    let loaded = save_chains(family)?.ok_or_else(|| {
        ApplyError::ReadBack(format!("{}: egressc's chains are missing", family.tool()))
    })?;
    let comments = |lines: &mut dyn Iterator<Item = &str>| -> Vec<String> {
        lines
            .filter(|l| l.starts_with("-A EGRESSC"))
            .map(|l| {
                let chain = l.split_whitespace().nth(1).unwrap_or("").to_string();
                let comment = l
                    .split_once("--comment ")
                    .map(|(_, rest)| comment_value(rest));
                format!("{chain}: {}", comment.unwrap_or_default())
            })
            .collect()
    };
    let want = comments(&mut text.lines());
    let got = comments(&mut loaded.iter().map(String::as_str));
    if want != got {
        return Err(ApplyError::ReadBack(format!(
            "{}: loaded {} rules, expected {}",
            family.tool(),
            got.len(),
            want.len()
        )));
    }
    let output = run_tool(family.tool(), &["-S", "OUTPUT"])?;
    let jumps = output
        .lines()
        .filter(|l| l.ends_with(&format!("-j {}", CHAINS[0])))
        .count();
    if jumps != 1 {
        return Err(ApplyError::ReadBack(format!(
            "{}: OUTPUT jumps to {} {jumps} times",
            family.tool(),
            CHAINS[0]
        )));
    }
    Ok(())
}

/// The comment at the start of `rest`: quoted (`"a b" -j …`) or, as iptables-save
/// prints comments without spaces, bare (`loopback -j …`).
fn comment_value(rest: &str) -> String {
    match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next().unwrap_or("").to_string(),
        None => rest.split_whitespace().next().unwrap_or("").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::comment_value;

    #[test]
    fn comments_are_read_quoted_or_bare() {
        assert_eq!(
            comment_value("\"allow[0] host x\" -j RETURN"),
            "allow[0] host x"
        );
        assert_eq!(comment_value("loopback -j RETURN"), "loopback");
    }
}
