//! Hang diagnosis: when a round stops making progress, which rank the others wait for.
//!
//! An all-reduce cannot finish before every rank has entered it, so a rank that stops before
//! it (a stuck data loader, a deadlocked thread, a wedged GPU kernel) leaves its peers blocked
//! inside it. NCCL then waits forever and a ring times out naming only a neighbour. Every
//! heartbeat carries the rank's step and whether its training thread is inside the gradient
//! all-reduce now; from the last ones this names the rank that holds the others up.
//!
//! # Contract
//! * A rank *waits* when it is inside the all-reduce, in a coordinator barrier (an epoch's or
//!   checkpoint's report), or reported the collective's failure itself (it waited until its
//!   timeout). The suspect is the rank that does not wait with the lowest step while at least
//!   one other rank waits (ties: the lowest rank).
//! * When every rank waits, the one not heard from for the longest beyond 3 heartbeat
//!   intervals is the suspect (its process or host is gone); otherwise nobody is named.
//! * When no rank waits, the rank with the lowest step is the suspect if steps differ.
//! * The line lists every rank: step, where it is, and when it was last heard from.
//!
//! Tests: `tests` at the bottom; `tests/tests/hang.rs` (a real worker stopped by a failpoint).

use std::fmt::Write as _;

/// One rank as its heartbeats last described it.
#[derive(Debug, Clone, PartialEq)]
pub struct RankView {
    pub rank: u32,
    pub worker_id: String,
    pub host: String,
    /// Global steps done.
    pub step: u64,
    pub in_collective: bool,
    /// It waits in a coordinator barrier (an epoch's or checkpoint's report) for the others.
    pub at_barrier: bool,
    /// Seconds since it was last heard from.
    pub silent_s: f64,
}

/// What the coordinator says about a hung round.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnosis {
    /// The index (rank) the others wait for, when one can be named.
    pub suspect: Option<u32>,
    /// One line for people.
    pub line: String,
}

fn who(r: &RankView) -> String {
    format!("rank {} ({} on {})", r.rank, r.worker_id, r.host)
}

fn list(ranks: &[&RankView]) -> String {
    let n: Vec<String> = ranks.iter().map(|r| r.rank.to_string()).collect();
    format!(
        "rank{} {}",
        if n.len() == 1 { "" } else { "s" },
        n.join(", ")
    )
}

/// Names the rank the others wait for; `reporter` (a rank whose collective timed out) counts
/// as waiting inside the all-reduce.
pub fn diagnose(ranks: &[RankView], reporter: Option<u32>, heartbeat_interval_s: f64) -> Diagnosis {
    let inside_of = |r: &RankView| r.in_collective || r.at_barrier || Some(r.rank) == reporter;
    let place = |r: &RankView| {
        if r.in_collective || Some(r.rank) == reporter {
            "in the all-reduce"
        } else if r.at_barrier {
            "at a barrier"
        } else {
            "working"
        }
    };
    let inside: Vec<&RankView> = ranks.iter().filter(|r| inside_of(r)).collect();
    let outside: Vec<&RankView> = ranks.iter().filter(|r| !inside_of(r)).collect();
    let lowest = |v: &[&RankView]| {
        v.iter()
            .min_by_key(|r| (r.step, r.rank))
            .map(|r| (*r).clone())
    };
    let (suspect, head) = if !inside.is_empty() && !outside.is_empty() {
        let s = lowest(&outside);
        let head = s.as_ref().map(|s| {
            format!(
                "the round waits for {}: at step {}, not in the all-reduce, while {} wait{}",
                who(s),
                s.step,
                list(&inside),
                if inside.len() == 1 { "s" } else { "" }
            )
        });
        (s, head)
    } else if outside.is_empty() {
        let silent = ranks
            .iter()
            .filter(|r| r.silent_s > 3.0 * heartbeat_interval_s)
            .max_by(|a, b| a.silent_s.total_cmp(&b.silent_s))
            .cloned();
        let head = match &silent {
            Some(s) => format!(
                "every rank waits; {} has not been heard from for {:.1} s",
                who(s),
                s.silent_s
            ),
            None => "every rank waits (a lost connection between ranks?)".to_string(),
        };
        (silent, Some(head))
    } else {
        let steps_differ = ranks.windows(2).any(|w| w[0].step != w[1].step);
        let s = lowest(&outside).filter(|_| steps_differ);
        let head = match &s {
            Some(s) => format!("no rank waits; {} is behind, at step {}", who(s), s.step),
            None => "no rank waits, all at the same step".to_string(),
        };
        (s, Some(head))
    };
    let mut line = head.unwrap_or_default();
    line.push_str(" [");
    for (i, r) in ranks.iter().enumerate() {
        let _ = write!(
            line,
            "{}rank {} step {} {} (heard {:.1} s ago)",
            if i > 0 { "; " } else { "" },
            r.rank,
            r.step,
            place(r),
            r.silent_s
        );
    }
    line.push(']');
    Diagnosis {
        suspect: suspect.map(|s| s.rank),
        line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(rank: u32, step: u64, in_collective: bool, silent_s: f64) -> RankView {
        RankView {
            rank,
            worker_id: format!("w{rank}"),
            host: format!("10.0.0.{}", rank + 1),
            step,
            in_collective,
            at_barrier: false,
            silent_s,
        }
    }

    #[test]
    fn the_rank_outside_the_all_reduce_is_named_with_its_host() {
        let d = diagnose(
            &[
                view(0, 57, true, 0.2),
                view(1, 57, false, 0.3),
                view(2, 57, true, 0.1),
            ],
            None,
            1.0,
        );
        assert_eq!(d.suspect, Some(1));
        assert!(
            d.line.starts_with(
                "the round waits for rank 1 (w1 on 10.0.0.2): at step 57, not in the all-reduce, while ranks 0, 2 wait"
            ),
            "{}",
            d.line
        );
        assert!(
            d.line.contains("rank 1 step 57 working (heard 0.3 s ago)"),
            "{}",
            d.line
        );
        assert!(
            d.line.contains("rank 0 step 57 in the all-reduce"),
            "{}",
            d.line
        );
    }

    #[test]
    fn the_lowest_step_outside_wins_and_a_reporter_counts_as_inside() {
        let d = diagnose(
            &[
                view(0, 40, false, 0.2),
                view(1, 39, false, 0.3),
                view(2, 41, false, 0.1),
            ],
            Some(2),
            1.0,
        );
        assert_eq!(d.suspect, Some(1));
        assert!(d.line.contains("while rank 2 waits"), "{}", d.line);
        // A rank at a barrier waits too.
        let mut v = vec![view(0, 40, false, 0.2), view(1, 39, false, 0.3)];
        v[0].at_barrier = true;
        let d = diagnose(&v, None, 1.0);
        assert_eq!(d.suspect, Some(1));
        assert!(d.line.contains("rank 0 step 40 at a barrier"), "{}", d.line);
    }

    #[test]
    fn all_inside_names_only_a_silent_rank() {
        let d = diagnose(&[view(0, 9, true, 0.2), view(1, 9, true, 0.4)], None, 1.0);
        assert_eq!(d.suspect, None);
        assert!(d.line.starts_with("every rank waits (a lost"), "{}", d.line);
        let d = diagnose(&[view(0, 9, true, 0.2), view(1, 9, true, 12.0)], None, 1.0);
        assert_eq!(d.suspect, Some(1));
        assert!(d.line.contains(
            "every rank waits; rank 1 (w1 on 10.0.0.2) has not been heard from for 12.0 s"
        ));
    }

    #[test]
    fn nobody_inside_names_the_rank_behind_if_any() {
        let d = diagnose(&[view(0, 9, false, 0.2), view(1, 9, false, 0.4)], None, 1.0);
        assert_eq!(d.suspect, None);
        let d = diagnose(&[view(0, 9, false, 0.2), view(1, 7, false, 0.4)], None, 1.0);
        assert_eq!(d.suspect, Some(1));
        assert!(d
            .line
            .starts_with("no rank waits; rank 1 (w1 on 10.0.0.2) is behind, at step 7"));
    }
}
