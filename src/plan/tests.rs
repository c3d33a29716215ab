//! Planner tests: named cases with known optimal plans, and an exhaustive search on
//! random small instances that the dynamic programme must match exactly.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use RegisterKind::{Coil, Discrete, Holding, Input};

fn span(tag: usize, kind: RegisterKind, address: u16, count: u16) -> Span {
    Span {
        tag,
        kind,
        address,
        count,
    }
}

/// Holding-register spans `(address, count)`, tagged by position.
fn holding(spans: &[(u16, u16)]) -> Vec<Span> {
    spans
        .iter()
        .enumerate()
        .map(|(tag, &(address, count))| span(tag, Holding, address, count))
        .collect()
}

fn limits(max_gap: u16, max_len: u16) -> Limits {
    Limits {
        max_gap,
        max_registers: max_len.min(125),
        max_bits: max_len,
    }
}

/// `(kind, first address, count)` of each request.
fn shape(plan: &Plan) -> Vec<(RegisterKind, u16, u16)> {
    plan.requests
        .iter()
        .map(|r| (r.kind, r.address, r.count))
        .collect()
}

/// Checks the plan obeys every rule, independently of how it was made: each tag read
/// exactly once and wholly inside its request, at the offset it occupies, lengths
/// within the limit, no unused run longer than `max_gap` inside any request.
fn assert_valid(spans: &[Span], limits: Limits, plan: &Plan) {
    let mut seen = vec![0; spans.len()];
    for request in &plan.requests {
        assert!(request.count >= 1 && request.count <= limits.max_count(request.kind));
        let first = u32::from(request.address);
        let last = first + u32::from(request.count) - 1;
        assert!(last <= 65535, "{request}");
        for slot in &request.slots {
            let tag = spans.iter().find(|s| s.tag == slot.tag).expect("known tag");
            seen[spans.iter().position(|s| s.tag == slot.tag).unwrap()] += 1;
            assert_eq!(tag.kind, request.kind);
            assert_eq!(
                u32::from(tag.address),
                first + u32::from(slot.offset),
                "{request}"
            );
            assert_eq!(tag.count, slot.count);
            assert!(u32::from(tag.address) + u32::from(tag.count) - 1 <= last);
        }
        let used = |address: u32| {
            spans.iter().any(|s| {
                s.kind == request.kind
                    && u32::from(s.address) <= address
                    && address < u32::from(s.address) + u32::from(s.count)
            })
        };
        let mut run = 0;
        for address in first..=last {
            run = if used(address) { 0 } else { run + 1 };
            assert!(
                run <= limits.max_gap,
                "gap over {} in {request}",
                limits.max_gap
            );
        }
    }
    assert!(seen.iter().all(|&n| n == 1), "each tag read once: {seen:?}");
}

/// (requests, addresses read) of an optimal plan, by exhaustive search over every
/// valid address window and every set of windows (via a DP over subsets of tags).
fn brute_force(spans: &[Span], limits: Limits) -> (u32, u64) {
    let mut total = (0, 0);
    for kind in [Coil, Discrete, Holding, Input] {
        let table: Vec<(u32, u32)> = spans
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| {
                (
                    u32::from(s.address),
                    u32::from(s.address) + u32::from(s.count) - 1,
                )
            })
            .collect();
        if table.is_empty() {
            continue;
        }
        let lowest = table.iter().map(|t| t.0).min().unwrap();
        let highest = table.iter().map(|t| t.1).max().unwrap();
        let used = |a: u32| table.iter().any(|&(s, e)| s <= a && a <= e);
        let max_len = u32::from(limits.max_count(kind));
        let mut windows = Vec::new();
        for start in lowest..=highest {
            let mut run = 0;
            for end in start..=highest.min(start + max_len - 1) {
                run = if used(end) { 0 } else { run + 1 };
                if run > u32::from(limits.max_gap) {
                    break;
                }
                let covers = table
                    .iter()
                    .enumerate()
                    .filter(|(_, &(s, e))| start <= s && e <= end)
                    .fold(0usize, |mask, (i, _)| mask | 1 << i);
                if covers != 0 {
                    windows.push((covers, u64::from(end - start + 1)));
                }
            }
        }
        let full = (1usize << table.len()) - 1;
        let mut best = vec![(u32::MAX, u64::MAX); full + 1];
        best[0] = (0, 0);
        for mask in 0..=full {
            if best[mask].0 == u32::MAX {
                continue;
            }
            for &(covers, len) in &windows {
                let next = mask | covers;
                let cost = (best[mask].0 + 1, best[mask].1 + len);
                if cost < best[next] {
                    best[next] = cost;
                }
            }
        }
        total.0 += best[full].0;
        total.1 += best[full].1;
    }
    total
}

fn cost(plan: &Plan) -> (u32, u64) {
    (
        plan.requests.len() as u32,
        plan.requests.iter().map(|r| u64::from(r.count)).sum(),
    )
}

#[test]
fn matches_exhaustive_search_on_random_instances() {
    let mut rng = StdRng::seed_from_u64(0x091A_4E55);
    for case in 0..4000 {
        let max_len = rng.gen_range(1..=12u16);
        let limits = limits(rng.gen_range(0..=4), max_len);
        let tags = rng.gen_range(1..=8);
        let kinds: &[RegisterKind] = if case % 4 == 0 {
            &[Coil, Holding]
        } else {
            &[Holding]
        };
        let spans: Vec<Span> = (0..tags)
            .map(|tag| {
                let count = rng.gen_range(1..=max_len.min(4));
                let kind = kinds[rng.gen_range(0..kinds.len())];
                span(tag, kind, rng.gen_range(0..24), count)
            })
            .collect();
        let plan = plan(&spans, limits).unwrap();
        assert_valid(&spans, limits, &plan);
        assert_eq!(
            cost(&plan),
            brute_force(&spans, limits),
            "case {case}: {spans:?} {limits:?}"
        );
    }
}

#[test]
fn contiguous_block_is_one_request() {
    let mut spans: Vec<(u16, u16)> = (0..10).map(|a| (a, 1)).collect();
    spans.push((10, 2));
    spans.push((12, 4));
    let spans = holding(&spans);
    let plan = plan(&spans, limits(0, 125)).unwrap();
    assert_eq!(shape(&plan), [(Holding, 0, 16)]);
    assert_eq!(
        plan.requests[0].tags().collect::<Vec<_>>(),
        (0..12).collect::<Vec<_>>()
    );
    assert_valid(&spans, limits(0, 125), &plan);
}

#[test]
fn scattered_addresses_known_optimum() {
    let spans = holding(&[(0, 1), (5, 1), (30, 2), (100, 1), (200, 1), (210, 1)]);
    let count = |max_gap| plan(&spans, limits(max_gap, 125)).unwrap().requests.len();
    assert_eq!(count(0), 6);
    assert_eq!(count(4), 5, "0 and 5 join");
    assert_eq!(count(9), 4, "and 200 with 210");
    assert_eq!(count(24), 3, "and 30..31");
    assert_eq!(count(68), 2);
    // 0..=210 is longer than 125, so two requests; of the two-request plans the one
    // reading fewest registers is 0..=100 and 200..=210 (112 against 143).
    let plan = plan(&spans, limits(100, 125)).unwrap();
    assert_eq!(shape(&plan), [(Holding, 0, 101), (Holding, 200, 11)]);
    assert_eq!(plan.requests[0].tags().collect::<Vec<_>>(), [0, 1, 2, 3]);
}

#[test]
fn fewest_registers_among_fewest_requests() {
    // A greedy planner reads 0..=9 then 11..=19 (19 registers); 0 then 9..=19 is 12.
    let spans = holding(&[(0, 1), (9, 1), (11, 9)]);
    let plan = plan(&spans, limits(5, 11)).unwrap();
    assert_eq!(shape(&plan), [(Holding, 0, 1), (Holding, 9, 11)]);
}

#[test]
fn register_limit_boundary() {
    let at = |n: u16| holding(&(0..n).map(|a| (a, 1)).collect::<Vec<_>>());
    assert_eq!(
        shape(&plan(&at(125), Limits::default()).unwrap()),
        [(Holding, 0, 125)]
    );
    assert_eq!(
        shape(&plan(&at(126), Limits::default()).unwrap()),
        [(Holding, 0, 125), (Holding, 125, 1)]
    );
    // A 2-register value ending exactly at the 125th register fits; one further does not.
    let fits = holding(&[(0, 1), (123, 2)]);
    assert_eq!(
        shape(&plan(&fits, limits(200, 125)).unwrap()),
        [(Holding, 0, 125)]
    );
    let over = holding(&[(0, 1), (124, 2)]);
    assert_eq!(plan(&over, limits(200, 125)).unwrap().requests.len(), 2);
    // The largest string, 125 registers, is one request.
    let string = holding(&[(1000, 125)]);
    assert_eq!(
        shape(&plan(&string, Limits::default()).unwrap()),
        [(Holding, 1000, 125)]
    );
}

#[test]
fn bit_limit_boundary() {
    let coils = |n: u16| -> Vec<Span> { (0..n).map(|a| span(a.into(), Coil, a, 1)).collect() };
    assert_eq!(
        shape(&plan(&coils(2000), Limits::default()).unwrap()),
        [(Coil, 0, 2000)]
    );
    assert_eq!(
        shape(&plan(&coils(2001), Limits::default()).unwrap()),
        [(Coil, 0, 2000), (Coil, 2000, 1)]
    );
    let spread = [
        span(0, Discrete, 0, 1),
        span(1, Discrete, 1999, 1),
        span(2, Discrete, 2000, 1),
    ];
    assert_eq!(
        shape(&plan(&spread, limits(2000, 2000)).unwrap()),
        [(Discrete, 0, 1), (Discrete, 1999, 2)]
    );
}

#[test]
fn tags_at_the_top_of_the_address_space() {
    let spans = holding(&[(65535, 1), (65530, 1)]);
    let plan_top = plan(&spans, limits(4, 125)).unwrap();
    assert_eq!(shape(&plan_top), [(Holding, 65530, 6)]);
    assert_eq!(plan_top.requests[0].last_address(), 65535);
    assert_eq!(
        plan_top.requests[0].slots[1],
        Slot {
            tag: 0,
            offset: 5,
            count: 1
        }
    );
    let coil = [span(0, Coil, 65535, 1)];
    assert_eq!(
        shape(&plan(&coil, Limits::default()).unwrap()),
        [(Coil, 65535, 1)]
    );
    let f32_at_end = holding(&[(65534, 2)]);
    assert_eq!(
        shape(&plan(&f32_at_end, Limits::default()).unwrap()),
        [(Holding, 65534, 2)]
    );
    let past_end = holding(&[(65535, 2)]);
    assert_eq!(
        plan(&past_end, Limits::default()),
        Err(PlanError::PastEnd {
            tag: 0,
            kind: Holding,
            address: 65535,
            count: 2
        })
    );
}

#[test]
fn max_gap_zero_reads_only_used_addresses() {
    assert_eq!(
        plan(&holding(&[(0, 1), (2, 1)]), limits(0, 125))
            .unwrap()
            .requests
            .len(),
        2
    );
    assert_eq!(
        plan(&holding(&[(0, 1), (1, 1)]), limits(0, 125))
            .unwrap()
            .requests
            .len(),
        1
    );
    assert_eq!(
        plan(&holding(&[(0, 1), (2, 1)]), limits(1, 125))
            .unwrap()
            .requests
            .len(),
        1
    );
}

#[test]
fn overlapping_tags_share_a_request() {
    // A u16, three bits of the same register and a u32 starting there.
    let spans = holding(&[(10, 1), (10, 1), (10, 1), (10, 1), (10, 2)]);
    let plan_bits = plan(&spans, limits(0, 125)).unwrap();
    assert_eq!(shape(&plan_bits), [(Holding, 10, 2)]);
    assert!(plan_bits.requests[0].slots.iter().all(|s| s.offset == 0));
    assert_eq!(plan_bits.requests[0].slots.len(), 5);

    // A long string with a u16 inside it: the u16's register is covered, no gap.
    let nested = holding(&[(0, 10), (5, 1), (20, 1)]);
    assert_eq!(
        shape(&plan(&nested, limits(9, 125)).unwrap()),
        [(Holding, 0, 10), (Holding, 20, 1)]
    );
    assert_eq!(
        shape(&plan(&nested, limits(10, 125)).unwrap()),
        [(Holding, 0, 21)]
    );

    // Overlap forces overlapping requests when the limit is tight.
    let tight = holding(&[(0, 10), (8, 4)]);
    let plan_tight = plan(&tight, limits(0, 10)).unwrap();
    assert_eq!(shape(&plan_tight), [(Holding, 0, 10), (Holding, 8, 4)]);
    assert_valid(&tight, limits(0, 10), &plan_tight);
}

#[test]
fn tables_are_planned_separately_in_function_code_order() {
    let spans = [
        span(0, Input, 0, 1),
        span(1, Holding, 0, 1),
        span(2, Discrete, 0, 1),
        span(3, Coil, 0, 1),
        span(4, Holding, 1, 1),
    ];
    let plan = plan(&spans, Limits::default()).unwrap();
    assert_eq!(
        shape(&plan),
        [
            (Coil, 0, 1),
            (Discrete, 0, 1),
            (Holding, 0, 2),
            (Input, 0, 1)
        ]
    );
    let codes: Vec<u8> = plan
        .requests
        .iter()
        .map(|r| r.kind.read_function_code())
        .collect();
    assert_eq!(codes, [1, 2, 3, 4]);
    assert_eq!(plan.requests[2].tags().collect::<Vec<_>>(), [1, 4]);
}

#[test]
fn spans_of_typed_tags() {
    assert_eq!(
        Span::for_tag(3, Holding, 7, DataType::F64),
        span(3, Holding, 7, 4)
    );
    assert_eq!(
        Span::for_tag(0, Input, 0, DataType::String(5)),
        span(0, Input, 0, 3)
    );
    assert_eq!(
        Span::for_tag(1, Holding, 2, DataType::Bool),
        span(1, Holding, 2, 1)
    );
    assert_eq!(
        Span::for_tag(2, Coil, 9, DataType::Bool),
        span(2, Coil, 9, 1)
    );
}

#[test]
fn no_tags_no_requests() {
    assert_eq!(plan(&[], Limits::default()), Ok(Plan::default()));
}

#[test]
fn bad_input_is_an_error() {
    let one = holding(&[(0, 1)]);
    assert_eq!(
        plan(
            &one,
            Limits {
                max_registers: 126,
                ..Limits::default()
            }
        ),
        Err(PlanError::MaxRegisters(126))
    );
    assert_eq!(
        plan(
            &one,
            Limits {
                max_registers: 0,
                ..Limits::default()
            }
        ),
        Err(PlanError::MaxRegisters(0))
    );
    assert_eq!(
        plan(
            &one,
            Limits {
                max_bits: 2001,
                ..Limits::default()
            }
        ),
        Err(PlanError::MaxBits(2001))
    );
    assert_eq!(
        plan(&holding(&[(5, 0)]), Limits::default()),
        Err(PlanError::EmptySpan {
            tag: 0,
            kind: Holding
        })
    );
    let error = plan(
        &holding(&[(0, 60)]),
        Limits {
            max_registers: 50,
            ..Limits::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "tag #0 is 60 holding addresses long, more than one request may read (50)"
    );
}

#[test]
fn display_names_tags() {
    let spans = [
        span(0, Holding, 0, 2),
        span(1, Holding, 10, 4),
        span(2, Coil, 3, 1),
        span(3, Coil, 5, 1),
    ];
    let plan = plan(&spans, Limits::default()).unwrap();
    let names = ["temperature", "pressure", "pump_on", "alarm"];
    assert_eq!(
        plan.display_with(&names).to_string(),
        "coil 3..=5 (3 bits): pump_on, alarm\nholding 0..=13 (14 regs): temperature, pressure\n"
    );
    assert_eq!(
        plan.requests[1].to_string(),
        "holding 0..=13 (14 regs): #0, #1"
    );
    let single = super::plan(&holding(&[(7, 1)]), Limits::default()).unwrap();
    assert_eq!(
        single.requests[0].display_with(&["x"]).to_string(),
        "holding 7..=7 (1 reg): x"
    );
}

#[test]
fn slots_extract_tag_data_from_the_response() {
    let spans = holding(&[(100, 2), (103, 1), (100, 1)]);
    let plan = plan(&spans, limits(1, 125)).unwrap();
    let request = &plan.requests[0];
    assert_eq!((request.address, request.count), (100, 4));
    let response = [0x41A4, 0x0000, 0xDEAD, 0x0007];
    let data: Vec<(usize, &[u16])> = request
        .slots
        .iter()
        .map(|slot| (slot.tag, slot.extract(&response).unwrap()))
        .collect();
    assert_eq!(
        data,
        [
            (0, &response[0..2]),
            (2, &response[0..1]),
            (1, &response[3..4])
        ]
    );
    assert_eq!(
        request.slots[2].extract(&response[..3]),
        None,
        "short response"
    );
    let bits = [true, false];
    assert_eq!(
        Slot {
            tag: 9,
            offset: 1,
            count: 1
        }
        .extract(&bits),
        Some(&[false][..])
    );
}

#[test]
fn split_at_the_largest_gap() {
    let spans = holding(&[(0, 1), (5, 2), (20, 1), (22, 1)]);
    let plan = plan(&spans, limits(20, 125)).unwrap();
    assert_eq!(shape(&plan), [(Holding, 0, 23)]);
    let (left, right) = plan.requests[0].split_at_largest_gap().unwrap();
    assert_eq!((left.address, left.count), (0, 7));
    assert_eq!(left.tags().collect::<Vec<_>>(), [0, 1]);
    assert_eq!(
        left.slots[1],
        Slot {
            tag: 1,
            offset: 5,
            count: 2
        }
    );
    assert_eq!((right.address, right.count), (20, 3));
    assert_eq!(
        right.slots,
        [
            Slot {
                tag: 2,
                offset: 0,
                count: 1
            },
            Slot {
                tag: 3,
                offset: 2,
                count: 1
            }
        ]
    );
    // Splitting on: 0 | 5..=6, then 20 | 22, then nothing left to split.
    let (a, b) = left.split_at_largest_gap().unwrap();
    assert_eq!(
        ((a.address, a.count), (b.address, b.count)),
        ((0, 1), (5, 2))
    );
    assert_eq!(a.split_at_largest_gap(), None);
    assert_eq!(b.split_at_largest_gap(), None, "one tag");
}

#[test]
fn split_respects_overlapping_tags() {
    // The string covers 0..=9 and hides the u16 at 3 and the hole is 10..=11.
    let spans = holding(&[(3, 1), (0, 10), (12, 1)]);
    let plan = plan(&spans, limits(2, 125)).unwrap();
    let (left, right) = plan.requests[0].split_at_largest_gap().unwrap();
    assert_eq!(
        (left.address, left.count, left.tags().collect::<Vec<_>>()),
        (0, 10, vec![1, 0])
    );
    assert_eq!(
        (right.address, right.count, right.tags().collect::<Vec<_>>()),
        (12, 1, vec![2])
    );
    let contiguous = super::plan(&holding(&[(0, 10), (3, 1), (10, 2)]), Limits::default()).unwrap();
    assert_eq!(contiguous.requests[0].split_at_largest_gap(), None);
}

#[test]
fn random_splits_keep_every_tag_and_shrink() {
    let mut rng = StdRng::seed_from_u64(0x0005_9117);
    for _ in 0..2000 {
        let spans: Vec<Span> = (0..rng.gen_range(1..=10))
            .map(|tag| span(tag, Holding, rng.gen_range(0..60), rng.gen_range(1..=4)))
            .collect();
        let limits = limits(60, 125);
        let plan = plan(&spans, limits).unwrap();
        assert_eq!(plan.requests.len(), 1);
        let whole = &plan.requests[0];
        let Some((left, right)) = whole.split_at_largest_gap() else {
            continue;
        };
        assert!(left.last_address() < right.address, "halves are disjoint");
        assert!(left.address == whole.address && right.last_address() == whole.last_address());
        let mut tags: Vec<usize> = left.tags().chain(right.tags()).collect();
        tags.sort_unstable();
        let mut expected: Vec<usize> = whole.tags().collect();
        expected.sort_unstable();
        assert_eq!(tags, expected);
        let halves = Plan {
            requests: vec![left, right],
        };
        assert_valid(&spans, limits, &halves);
    }
}
