//! `cargo xtask bench verdicts`: every labelled scenario of `tests/src/scenarios.rs` once,
//! each with a fresh agent (default scoring calibration), server and namespaces; a row per
//! scenario, then the confusion matrix, precision and recall of `unhealthy`, and the alert
//! lines over healthy scenarios. It is a measurement: disagreements are printed, not
//! failures; a scenario that could not run (set-up) is an error.

use std::{path::Path, time::Instant};

use anyhow::{bail, Result};
use e2e::scenarios::{self, Outcome, State};

pub fn run(bin: &Path, only: Option<&str>) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the verdict scenarios load eBPF programs and make namespaces: run as root");
    }
    // The e2e harness starts the agent named by OBSERVER_BIN; nothing else runs yet.
    std::env::set_var("OBSERVER_BIN", bin);
    let chosen: Vec<_> = scenarios::all()
        .into_iter()
        .filter(|s| only.is_none_or(|o| s.name.contains(o)))
        .collect();
    if chosen.is_empty() {
        bail!("no scenario matches {only:?}");
    }
    let started = Instant::now();
    println!(
        "{:<30} {:<10} {:<10} {:<4} {:>6} {:>6}  {:<20} agent's sessions and views",
        "scenario", "expected", "predicted", "ok", "alerts", "secs", "findings"
    );
    let mut ran: Vec<(State, Outcome)> = Vec::new();
    let mut errors = Vec::new();
    let mut passed = 0;
    for s in &chosen {
        let t = Instant::now();
        match scenarios::run(s) {
            Ok(o) => {
                let problems = o.problems(s);
                if problems.is_empty() {
                    passed += 1;
                }
                println!(
                    "{:<30} {:<10} {:<10} {:<4} {:>6} {:>6.1}  {:<20} {}",
                    s.name,
                    s.expected.as_str(),
                    o.predicted.as_str(),
                    if problems.is_empty() { "ok" } else { "FAIL" },
                    o.alerts.len(),
                    t.elapsed().as_secs_f64(),
                    o.findings_summary(),
                    o.reasons_summary(),
                );
                for p in &problems {
                    println!("{:<30}   - {p}", "");
                }
                if o.foreign_sessions > 0 {
                    println!(
                        "{:<30}   ({} sessions of other traffic on this host not judged)",
                        "", o.foreign_sessions
                    );
                }
                ran.push((s.expected, o));
            }
            Err(e) => {
                println!("{:<30} {:<10} ERROR: {e:#}", s.name, s.expected.as_str());
                errors.push(s.name);
            }
        }
    }
    println!();
    report(&ran);
    println!(
        "scenarios passing every expectation: {passed} of {}; {:.0} s in all",
        chosen.len(),
        started.elapsed().as_secs_f64()
    );
    if !errors.is_empty() {
        bail!("scenarios that could not run: {}", errors.join(", "));
    }
    Ok(())
}

/// The confusion matrix, precision and recall of `unhealthy`, alerts over healthy ones.
fn report(ran: &[(State, Outcome)]) {
    let count = |e: State, p: State| {
        ran.iter()
            .filter(|(x, o)| *x == e && o.predicted == p)
            .count()
    };
    println!("confusion matrix (rows: expected, columns: predicted)");
    print!("{:<14}", "");
    for p in State::ALL {
        print!("{:>12}", p.as_str());
    }
    println!();
    for e in State::ALL {
        print!("{:<14}", e.as_str());
        for p in State::ALL {
            print!("{:>12}", count(e, p));
        }
        println!();
    }
    let tp = count(State::Unhealthy, State::Unhealthy);
    let predicted = ran
        .iter()
        .filter(|(_, o)| o.predicted == State::Unhealthy)
        .count();
    let actual = ran.iter().filter(|(e, _)| *e == State::Unhealthy).count();
    let ratio = |n: usize, d: usize| {
        if d == 0 {
            "n/a".to_string()
        } else {
            format!("{:.2} ({n}/{d})", n as f64 / d as f64)
        }
    };
    println!(
        "unhealthy: precision {}, recall {}",
        ratio(tp, predicted),
        ratio(tp, actual)
    );
    let healthy_alerts: usize = ran
        .iter()
        .filter(|(e, _)| *e == State::Healthy)
        .map(|(_, o)| o.alerts.len())
        .sum();
    println!("alert lines over healthy scenarios: {healthy_alerts}");
}
