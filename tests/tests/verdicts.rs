//! Verdicts: labelled scenarios (`e2e::scenarios`), each in a fresh agent with the
//! default scoring calibration, a fresh API server and fresh namespaces. Each test asserts
//! the exact expected state (the worst among the inbound sessions and views), the
//! expected reasons on the right kind of session or view, no alert for a healthy
//! scenario, and the expected finding. `cargo xtask bench verdicts` runs the same
//! scenarios and prints a confusion matrix instead of failing.

use e2e::{prerequisites, scenarios};

fn check(name: &str) {
    if !prerequisites() {
        return;
    }
    let scenario = scenarios::by_name(name);
    let outcome =
        scenarios::run(&scenario).unwrap_or_else(|e| panic!("{name} could not run: {e:#}"));
    let problems = outcome.problems(&scenario);
    assert!(
        problems.is_empty(),
        "{name}: {}\n  agent said: {}\n  alerts: {}, findings: {}",
        problems.join("; "),
        outcome.reasons_summary(),
        outcome.alerts.len(),
        outcome.findings_summary(),
    );
}

#[test]
fn healthy_opaque_token() {
    check("healthy_opaque_token");
}

#[test]
fn healthy_jwt() {
    check("healthy_jwt");
}

#[test]
fn healthy_cookie_session() {
    check("healthy_cookie_session");
}

#[test]
fn healthy_batch_client() {
    check("healthy_batch_client");
}

#[test]
fn healthy_client_moves_network() {
    check("healthy_client_moves_network");
}

#[test]
fn healthy_nat_many_users() {
    check("healthy_nat_many_users");
}

#[test]
fn healthy_login_typo() {
    check("healthy_login_typo");
}

#[test]
fn shared_token() {
    check("shared_token");
}

#[test]
fn credential_stuffing() {
    check("credential_stuffing");
}

#[test]
fn password_spraying() {
    check("password_spraying");
}

#[test]
fn enumeration() {
    check("enumeration");
}

#[test]
fn expired_jwt_accepted() {
    check("expired_jwt_accepted");
}

#[test]
fn jwt_alg_none() {
    check("jwt_alg_none");
}

#[test]
fn credential_in_query() {
    check("credential_in_query");
}

#[test]
fn frozen_credential_used() {
    check("frozen_credential_used");
}

#[test]
fn rotating_token_scraper() {
    check("rotating_token_scraper");
}

#[test]
fn shared_token_two_networks() {
    check("shared_token_two_networks");
}

#[test]
fn login_form_guessing() {
    check("login_form_guessing");
}

#[test]
fn one_key_three_programs() {
    check("one_key_three_programs");
}

/// Every scenario has its test above.
#[test]
fn every_scenario_has_a_test() {
    let tested = [
        "healthy_opaque_token",
        "healthy_jwt",
        "healthy_cookie_session",
        "healthy_batch_client",
        "healthy_client_moves_network",
        "healthy_nat_many_users",
        "healthy_login_typo",
        "shared_token",
        "credential_stuffing",
        "password_spraying",
        "enumeration",
        "expired_jwt_accepted",
        "jwt_alg_none",
        "credential_in_query",
        "frozen_credential_used",
        "rotating_token_scraper",
        "shared_token_two_networks",
        "login_form_guessing",
        "one_key_three_programs",
    ];
    let mut all: Vec<&str> = scenarios::all().iter().map(|s| s.name).collect();
    all.sort_unstable();
    let mut tested = tested.to_vec();
    tested.sort_unstable();
    assert_eq!(all, tested);
}
