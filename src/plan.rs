//! The read planner: coalesces the tags of one slave into the fewest Modbus read
//! requests.
//!
//! # Rules
//!
//! A plan reads every tag wholly inside one request; a request covers at most
//! `max_registers` registers (holding, input) or `max_bits` bits (coils, discrete
//! inputs); and inside a request no run of *unused* addresses is longer than
//! `max_gap`, an unused address being one that no tag of that table on that slave
//! covers. (Addresses some tag covers are known to exist on the device, even when that
//! tag is read by another request; the holes between tags may not exist.)
//!
//! # Optimality
//!
//! Among all plans obeying these rules, [`plan`] returns one with the fewest requests
//! and, among those, the fewest addresses read in total. Proof sketch, per table:
//!
//! 1. Shrinking a request never breaks a rule (it gets shorter and its unused runs
//!    only shrink), so every request may be taken to be the hull of the tags it reads.
//! 2. Take an optimal plan and sort its requests by start. If one request lies inside
//!    another, move its tags to the larger one and drop it. Now starts and ends both
//!    strictly increase, so for a tag starting at `a`, the last request starting at or
//!    before `a` has the largest end of all requests that could contain the tag: it
//!    contains the tag. Reassign every tag to that request and shrink each request to
//!    its tags' hull (rule 1). Then the requests read consecutive groups of the tags
//!    sorted by start address, each group being "the tags whose start lies in
//!    `[s_i, s_{i+1})`", and neither the count nor any request's length grew.
//! 3. So an optimal plan is a partition of the sorted distinct start addresses into
//!    consecutive groups, each read by its hull. Dynamic programming over the sorted
//!    starts finds the best such partition exactly: `best[k]` is the best cost for the
//!    first `k` starts, and `best[k] = min over j < k of best[j] + cost(group j..k)`
//!    over valid groups, the cost being (1 request, hull length) compared
//!    lexicographically.
//!
//! A group is valid when its hull fits the length limit and crosses no hole longer
//! than `max_gap`, so the search for each `j` stops at the first invalid `k`: the work
//! is at most (distinct starts) x (limit).
//!
//! The tests check this against an exhaustive search on thousands of small instances.

use std::fmt;
use std::ops::Range;

use thiserror::Error;

use crate::registers::{DataType, RegisterKind};

/// The addresses one tag occupies. `tag` is the caller's index for the tag (for
/// example its position in the device's register list), returned in the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Span {
    pub tag: usize,
    pub kind: RegisterKind,
    pub address: u16,
    /// Registers (or bits, for coils and discrete inputs); at least 1.
    pub count: u16,
}

impl Span {
    /// The span of a tag of `data_type` at `address`: one bit in the bit tables, its
    /// register count in the word tables (a single bit of a register occupies that
    /// register).
    pub fn for_tag(tag: usize, kind: RegisterKind, address: u16, data_type: DataType) -> Span {
        let count = if kind.is_bit() {
            1
        } else {
            data_type.register_count()
        };
        Span {
            tag,
            kind,
            address,
            count,
        }
    }
}

/// How far requests may be coalesced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest run of unused addresses a request may read across.
    pub max_gap: u16,
    /// Registers per holding/input request: 1 to 125.
    pub max_registers: u16,
    /// Bits per coil/discrete-input request: 1 to 2000.
    pub max_bits: u16,
}

impl Limits {
    /// Reading a few unused registers costs far less bus time than another request
    /// (two bytes each against a whole request/response turnaround).
    pub const DEFAULT_MAX_GAP: u16 = 16;

    /// The limit on request length for a table.
    pub fn max_count(&self, kind: RegisterKind) -> u16 {
        if kind.is_bit() {
            self.max_bits
        } else {
            self.max_registers
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_gap: Self::DEFAULT_MAX_GAP,
            max_registers: RegisterKind::Holding.max_read_count(),
            max_bits: RegisterKind::Coil.max_read_count(),
        }
    }
}

/// Why a set of spans cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlanError {
    #[error("max_registers must be 1 to 125, got {0}")]
    MaxRegisters(u16),
    #[error("max_bits must be 1 to 2000, got {0}")]
    MaxBits(u16),
    #[error("tag #{tag} occupies no {kind} addresses")]
    EmptySpan { tag: usize, kind: RegisterKind },
    #[error("tag #{tag} ({kind} {address}, {count} long) runs past address 65535")]
    PastEnd {
        tag: usize,
        kind: RegisterKind,
        address: u16,
        count: u16,
    },
    #[error(
        "tag #{tag} is {count} {kind} addresses long, more than one request may read ({limit})"
    )]
    TooLong {
        tag: usize,
        kind: RegisterKind,
        count: u16,
        limit: u16,
    },
}

/// Where one tag's data sits in a request's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Slot {
    pub tag: usize,
    /// Index of the tag's first register (or bit) in the response.
    pub offset: u16,
    pub count: u16,
}

impl Slot {
    /// The index range of this tag's data in the response.
    pub fn range(&self) -> Range<usize> {
        let start = usize::from(self.offset);
        start..start + usize::from(self.count)
    }

    /// This tag's registers (or bits) out of a response, or `None` when the response
    /// is too short to hold them.
    pub fn extract<'a, T>(&self, response: &'a [T]) -> Option<&'a [T]> {
        response.get(self.range())
    }
}

/// One Modbus read request and the tags it serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReadRequest {
    pub kind: RegisterKind,
    pub address: u16,
    /// Registers (or bits) to read.
    pub count: u16,
    /// The tags this request reads, ordered by offset then tag.
    pub slots: Vec<Slot>,
}

impl ReadRequest {
    /// The request that reads exactly these tags (their hull); `None` when empty.
    fn covering(kind: RegisterKind, spans: &[(usize, u32, u32)]) -> Option<ReadRequest> {
        let start = spans.iter().map(|&(_, a, _)| a).min()?;
        let end = spans.iter().map(|&(_, _, e)| e).max()?;
        let mut slots: Vec<Slot> = spans
            .iter()
            .map(|&(tag, a, e)| Slot {
                tag,
                // Every span lies within 0..=65535 and within the hull.
                offset: (a - start) as u16,
                count: (e - a + 1) as u16,
            })
            .collect();
        slots.sort_by_key(|slot| (slot.offset, slot.tag));
        Some(ReadRequest {
            kind,
            address: start as u16,
            count: (end - start + 1) as u16,
            slots,
        })
    }

    /// The tag indices this request reads.
    pub fn tags(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots.iter().map(|slot| slot.tag)
    }

    /// Splits the request in two around the longest run of addresses that none of its
    /// own tags covers, each half shrunk to its tags. `None` when its tags cover it
    /// without a hole. For a device that answers "illegal data address" to a request
    /// spanning a hole in its register map: split and retry, halving as needed.
    pub fn split_at_largest_gap(&self) -> Option<(ReadRequest, ReadRequest)> {
        let spans = self.absolute_spans();
        let mut order: Vec<&(usize, u32, u32)> = spans.iter().collect();
        order.sort_by_key(|&&(_, a, _)| a);
        // Walk the tags by start, tracking the furthest end so far: a hole is a jump
        // from that end to the next start.
        let mut best: Option<(u32, u32)> = None; // (gap length, first address after the gap)
        let mut reached = order.first()?.2;
        for &&(_, a, e) in &order[1..] {
            if a > reached + 1 {
                let gap = a - reached - 1;
                match best {
                    Some((longest, _)) if longest >= gap => {}
                    _ => best = Some((gap, a)),
                }
            }
            reached = reached.max(e);
        }
        let (_, split) = best?;
        let (left, right): (Vec<_>, Vec<_>) = spans.iter().partition(|&&(_, a, _)| a < split);
        Some((
            ReadRequest::covering(self.kind, &left)?,
            ReadRequest::covering(self.kind, &right)?,
        ))
    }

    /// The last address this request reads.
    pub fn last_address(&self) -> u16 {
        let last = u32::from(self.address) + u32::from(self.count.max(1)) - 1;
        last.min(u32::from(u16::MAX)) as u16
    }

    fn absolute_spans(&self) -> Vec<(usize, u32, u32)> {
        self.slots
            .iter()
            .map(|slot| {
                let start = u32::from(self.address) + u32::from(slot.offset);
                // A hand-made empty slot counts as one address rather than underflowing.
                (slot.tag, start, start + u32::from(slot.count.max(1)) - 1)
            })
            .collect()
    }

    /// Formats the request with tag names (`names[tag]`, or `#tag` beyond the slice).
    pub fn display_with<'a, N: AsRef<str>>(&'a self, names: &'a [N]) -> impl fmt::Display + 'a {
        RequestDisplay {
            request: self,
            names,
        }
    }
}

struct RequestDisplay<'a, N> {
    request: &'a ReadRequest,
    names: &'a [N],
}

impl<N: AsRef<str>> fmt::Display for RequestDisplay<'_, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.request;
        let unit = match (r.kind.is_bit(), r.count) {
            (true, 1) => "bit",
            (true, _) => "bits",
            (false, 1) => "reg",
            (false, _) => "regs",
        };
        write!(
            f,
            "{} {}..={} ({} {unit}):",
            r.kind,
            r.address,
            r.last_address(),
            r.count
        )?;
        for (i, tag) in r.tags().enumerate() {
            let separator = if i == 0 { " " } else { ", " };
            match self.names.get(tag) {
                Some(name) => write!(f, "{separator}{}", name.as_ref())?,
                None => write!(f, "{separator}#{tag}")?,
            }
        }
        Ok(())
    }
}

/// `holding 0..=13 (14 regs): #0, #3`; use [`ReadRequest::display_with`] for names.
impl fmt::Display for ReadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.display_with::<&str>(&[]).fmt(f)
    }
}

/// The requests of one slave's poll cycle, by function code (coils, discrete inputs,
/// holding, input) and then address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub requests: Vec<ReadRequest>,
}

impl Plan {
    /// One line per request, with tag names (`names[tag]`).
    pub fn display_with<'a, N: AsRef<str>>(&'a self, names: &'a [N]) -> impl fmt::Display + 'a {
        PlanDisplay { plan: self, names }
    }
}

struct PlanDisplay<'a, N> {
    plan: &'a Plan,
    names: &'a [N],
}

impl<N: AsRef<str>> fmt::Display for PlanDisplay<'_, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for request in &self.plan.requests {
            writeln!(f, "{}", request.display_with(self.names))?;
        }
        Ok(())
    }
}

/// Plans the reads of one slave: the fewest requests (then the fewest addresses read)
/// that read every span under `limits`. See the module documentation for the rules.
pub fn plan(spans: &[Span], limits: Limits) -> Result<Plan, PlanError> {
    if !(1..=RegisterKind::Holding.max_read_count()).contains(&limits.max_registers) {
        return Err(PlanError::MaxRegisters(limits.max_registers));
    }
    if !(1..=RegisterKind::Coil.max_read_count()).contains(&limits.max_bits) {
        return Err(PlanError::MaxBits(limits.max_bits));
    }
    for span in spans {
        check_span(span, limits)?;
    }
    let mut requests = Vec::new();
    for kind in [
        RegisterKind::Coil,
        RegisterKind::Discrete,
        RegisterKind::Holding,
        RegisterKind::Input,
    ] {
        let table: Vec<(usize, u32, u32)> = spans
            .iter()
            .filter(|span| span.kind == kind)
            .map(|span| {
                let start = u32::from(span.address);
                (span.tag, start, start + u32::from(span.count) - 1)
            })
            .collect();
        requests.extend(plan_table(
            kind,
            table,
            u32::from(limits.max_gap),
            u32::from(limits.max_count(kind)),
        ));
    }
    Ok(Plan { requests })
}

fn check_span(span: &Span, limits: Limits) -> Result<(), PlanError> {
    let Span {
        tag,
        kind,
        address,
        count,
    } = *span;
    if count == 0 {
        return Err(PlanError::EmptySpan { tag, kind });
    }
    if u32::from(address) + u32::from(count) > 1 << 16 {
        return Err(PlanError::PastEnd {
            tag,
            kind,
            address,
            count,
        });
    }
    let limit = limits.max_count(kind);
    if count > limit {
        return Err(PlanError::TooLong {
            tag,
            kind,
            count,
            limit,
        });
    }
    Ok(())
}

/// Optimal requests for the spans `(tag, first, last)` of one table; each span is
/// non-empty and no longer than `max_len`.
fn plan_table(
    kind: RegisterKind,
    mut spans: Vec<(usize, u32, u32)>,
    max_gap: u32,
    max_len: u32,
) -> Vec<ReadRequest> {
    if spans.is_empty() {
        return Vec::new();
    }
    spans.sort_by_key(|&(tag, a, e)| (a, e, tag));

    // Distinct starts, each with the furthest end of the tags starting there, and the
    // index of its first span.
    let mut starts: Vec<(u32, u32, usize)> = Vec::new();
    for (i, &(_, a, e)) in spans.iter().enumerate() {
        match starts.last_mut() {
            Some(last) if last.0 == a => last.1 = last.1.max(e),
            _ => starts.push((a, e, i)),
        }
    }

    // Islands: maximal runs of starts whose covered addresses are separated by no
    // hole longer than `max_gap`. No request may span two islands.
    let mut island = Vec::with_capacity(starts.len());
    let mut reached = starts[0].1;
    let mut current = 0usize;
    for &(a, e, _) in &starts {
        if a > reached + 1 && a - reached - 1 > max_gap {
            current += 1;
        }
        reached = reached.max(e);
        island.push(current);
    }

    // best[k]: (requests, addresses read) for the first k starts, and where the last
    // group begins.
    let n = starts.len();
    let mut best: Vec<((u32, u64), usize)> = vec![((u32::MAX, u64::MAX), 0); n + 1];
    best[0] = ((0, 0), 0);
    for j in 0..n {
        let ((requests, read), _) = best[j];
        let group_start = starts[j].0;
        let mut group_end = 0;
        for k in j..n {
            group_end = group_end.max(starts[k].1);
            let len = group_end - group_start + 1;
            if island[k] != island[j] || len > max_len {
                break;
            }
            let cost = (
                requests.saturating_add(1),
                read.saturating_add(u64::from(len)),
            );
            // On a tie the later split wins, so earlier requests come out longest.
            if cost <= best[k + 1].0 {
                best[k + 1] = (cost, j);
            }
        }
    }

    // Walk the groups back from the end.
    let mut requests = Vec::new();
    let mut k = n;
    while k > 0 {
        let j = best[k].1;
        let first_span = starts[j].2;
        let end_span = starts.get(k).map_or(spans.len(), |s| s.2);
        requests.extend(ReadRequest::covering(kind, &spans[first_span..end_span]));
        k = j;
    }
    requests.reverse();
    requests
}

#[cfg(test)]
mod tests;
