use super::*;

const S: u64 = 1_000_000_000;

fn p(entity_id: u64, pid: u32, exe: &str) -> Process {
    Process { entity_id, pid, exe: exe.into() }
}

/// init -> sshd -> sshd (session) -> bash -> sudo -> useradd, and helpers.
fn tree() -> HashMap<&'static str, Vec<Process>> {
    let init = p(1, 1, "/sbin/init");
    let sshd = p(10, 100, "/usr/sbin/sshd");
    let session = p(11, 110, "/usr/sbin/sshd");
    let bash = p(12, 120, "/bin/bash");
    let sudo = p(13, 130, "/usr/bin/sudo");
    let useradd = p(14, 140, "/usr/sbin/useradd");
    let nscd = p(15, 150, "/usr/sbin/nscd");
    let chage = p(16, 160, "/usr/bin/chage");
    let other_session = p(21, 210, "/usr/sbin/sshd");
    let other_bash = p(22, 220, "/bin/bash");
    let cron = p(30, 300, "/usr/sbin/cron");
    let chain = |v: &[&Process]| v.iter().map(|x| (*x).clone()).collect::<Vec<_>>();
    HashMap::from([
        ("useradd", chain(&[&useradd, &sudo, &bash, &session, &sshd, &init])),
        ("nscd", chain(&[&nscd, &useradd, &sudo, &bash, &session, &sshd, &init])),
        ("chage", chain(&[&chage, &useradd, &sudo, &bash, &session, &sshd, &init])),
        ("sudo", chain(&[&sudo, &bash, &session, &sshd, &init])),
        ("other_bash", chain(&[&other_bash, &other_session, &sshd, &init])),
        ("cron", chain(&[&cron, &init])),
        ("sshd", chain(&[&sshd, &init])),
        ("init", chain(&[&init])),
    ])
}

fn facts<'a>(id: u64, time: u64, rule: &'a str, severity: Severity, lineage: &'a [Process]) -> AlertFacts<'a> {
    AlertFacts { alert_id: id, time, rule_id: rule, rule_name: rule, severity, lineage }
}

#[test]
fn a_useradd_tree_is_one_incident_and_repeats_are_counted() {
    let t = tree();
    let mut g = Grouper::new(IncidentConfig::default());
    let sev = Severity::Medium;
    // What one useradd raised before grouping: twelve alerts from the
    // process, its helpers and the files it wrote.
    let alerts: Vec<(&str, &str)> = vec![
        ("account-created", "useradd"),
        ("passwd-written", "useradd"),
        ("shadow-written", "useradd"),
        ("group-written", "useradd"),
        ("gshadow-written", "useradd"),
        ("passwd-written", "useradd"),
        ("shadow-written", "useradd"),
        ("account-files-written", "nscd"),
        ("account-files-written", "nscd"),
        ("password-aging-changed", "chage"),
        ("sudo-to-root", "sudo"),
        ("passwd-written", "useradd"),
    ];
    let verdicts: Vec<Verdict> = alerts.iter().enumerate().map(|(i, (rule, who))| g.add(&facts(100 + i as u64, (i as u64) * S, rule, sev, &t[who]))).collect();
    assert!(verdicts.iter().all(|v| v.incident_id == 100), "{verdicts:?}");
    let sent = verdicts.iter().filter(|v| !v.suppressed).count();
    assert_eq!(sent, 8, "repeats of a rule on the same process are not sent again");
    assert_eq!(verdicts[11].occurrence, 3);
    let i = g.incident(100).unwrap();
    assert_eq!((i.alert_count, i.suppressed, i.rules.len()), (12, 4, 8));
    assert_eq!((i.first_time, i.last_time), (0, 11 * S));
    // The sudo alert rooted the incident one generation higher: at bash.
    assert_eq!(i.root.as_ref().map(|r| r.exe.as_str()), Some("/bin/bash"));
    assert_eq!(g.open_count(), 1);
}

#[test]
fn separate_sessions_and_services_are_separate_incidents() {
    let t = tree();
    let mut g = Grouper::new(IncidentConfig::default());
    let a = g.add(&facts(1, S, "r", Severity::High, &t["useradd"]));
    let b = g.add(&facts(2, 2 * S, "r", Severity::High, &t["other_bash"]));
    let c = g.add(&facts(3, 3 * S, "r", Severity::High, &t["cron"]));
    let d = g.add(&facts(4, 4 * S, "r", Severity::High, &t["sshd"]));
    assert_eq!([a.incident_id, b.incident_id, c.incident_id, d.incident_id], [1, 2, 3, 4]);
    assert!(![a, b, c, d].iter().any(|v| v.suppressed), "the same rule on other processes is no repeat");
    // A service started by init roots its own story, not init's.
    assert_eq!(g.incident(3).unwrap().root.as_ref().unwrap().exe, "/usr/sbin/cron");
    // An alert on init itself is rooted at init.
    assert_eq!(storyline_root(&t["init"], 1).unwrap().pid, 1);
}

#[test]
fn the_window_closes_an_incident() {
    let t = tree();
    let cfg = IncidentConfig { window_ns: 60 * S, ..Default::default() };
    let mut g = Grouper::new(cfg);
    assert_eq!(g.add(&facts(1, 0, "r", Severity::Low, &t["useradd"])).incident_id, 1);
    // Within the window of the last alert: the incident slides on.
    assert_eq!(g.add(&facts(2, 50 * S, "s", Severity::Low, &t["useradd"])).incident_id, 1);
    assert_eq!(g.add(&facts(3, 100 * S, "t", Severity::Low, &t["useradd"])).incident_id, 1);
    // Past it: a new incident, where the rule is no repeat.
    let v = g.add(&facts(4, 200 * S, "r", Severity::Low, &t["useradd"]));
    assert_eq!((v.incident_id, v.suppressed, v.occurrence), (4, false, 1));
    assert!(g.incident(1).is_none(), "closed incidents are dropped");
}

#[test]
fn depth_zero_groups_descendants_but_not_siblings() {
    let t = tree();
    let mut g = Grouper::new(IncidentConfig { depth: 0, ..Default::default() });
    assert_eq!(g.add(&facts(1, 0, "r", Severity::Low, &t["useradd"])).incident_id, 1);
    assert_eq!(g.add(&facts(2, S, "r", Severity::Low, &t["nscd"])).incident_id, 1, "a child of an alerted process");
    let mut g = Grouper::new(IncidentConfig { depth: 0, ..Default::default() });
    assert_eq!(g.add(&facts(1, 0, "r", Severity::Low, &t["nscd"])).incident_id, 1);
    assert_eq!(g.add(&facts(2, S, "r", Severity::Low, &t["chage"])).incident_id, 2, "a sibling");
    let mut g = Grouper::new(IncidentConfig::default());
    assert_eq!(g.add(&facts(1, 0, "r", Severity::Low, &t["nscd"])).incident_id, 1);
    assert_eq!(g.add(&facts(2, S, "r", Severity::Low, &t["chage"])).incident_id, 1, "siblings share the parent at depth 1");
}

#[test]
fn suppression_can_be_turned_off_and_counts_stay() {
    let t = tree();
    let mut g = Grouper::new(IncidentConfig { suppress_repeats: false, ..Default::default() });
    g.add(&facts(1, 0, "r", Severity::Low, &t["useradd"]));
    let v = g.add(&facts(2, S, "r", Severity::Low, &t["useradd"]));
    assert_eq!((v.suppressed, v.occurrence), (false, 2));
    assert_eq!(g.incident(1).unwrap().suppressed, 1);
}

#[test]
fn alerts_without_a_process_stand_alone() {
    let mut g = Grouper::new(IncidentConfig::default());
    let a = g.add(&facts(1, 0, "agent.quarantine", Severity::High, &[]));
    let b = g.add(&facts(2, S, "agent.quarantine", Severity::High, &[]));
    assert_eq!((a.incident_id, a.suppressed, b.incident_id, b.suppressed), (1, false, 2, false));
    assert_eq!(g.incident(2).unwrap().alert_count, 1);
    assert_eq!(g.open_count(), 0);
    assert!(g.incident(2).unwrap().summary().starts_with("high: 1 alert of 1 rule: agent.quarantine"), "{}", g.incident(2).unwrap().summary());
}

#[test]
fn score_and_summary() {
    let t = tree();
    let mut g = Grouper::new(IncidentConfig::default());
    g.add(&facts(1, 0, "low-one", Severity::Low, &t["useradd"]));
    assert_eq!(g.incident(1).unwrap().score(), 21);
    g.add(&facts(2, S, "high-one", Severity::High, &t["useradd"]));
    // 73 + ceil(21 / 4) = 79; a repeat adds nothing.
    g.add(&facts(3, 2 * S, "high-one", Severity::High, &t["useradd"]));
    let i = g.incident(1).unwrap();
    assert_eq!((i.score(), i.severity()), (79, Severity::High));
    for (n, rule) in ["a", "b", "c", "d"].iter().enumerate() {
        g.add(&facts(10 + n as u64, 3 * S, rule, Severity::Critical, &t["useradd"]));
    }
    let i = g.incident(1).unwrap();
    assert_eq!(i.score(), 100, "capped");
    let s = i.summary();
    assert_eq!(s, "critical: 7 alerts of 6 rules in the process tree of /usr/bin/sudo (pid 130), 1 repeat: a, b, c and 3 more", "{s}");
    assert!(!s.contains('\n'));
}

#[test]
fn hostile_lineages_and_floods_stay_bounded() {
    // A cycle, an unknown (0) entity, a lineage of 10,000 processes.
    let cyc = vec![p(5, 50, "a"), p(6, 60, "b"), p(5, 50, "a")];
    let long: Vec<Process> = (0..10_000u64).map(|i| p(1000 + i, 2 + i as u32, "x")).collect();
    let mut g = Grouper::new(IncidentConfig { max_open: 8, ..Default::default() });
    assert_eq!(g.add(&facts(1, 0, "r", Severity::Low, &cyc)).incident_id, 1);
    assert_eq!(g.add(&facts(2, 0, "r", Severity::Low, &long)).incident_id, 2);
    // 100 unrelated processes: at most max_open incidents are kept open.
    for i in 0..100u64 {
        let l = [p(50_000 + i, 5000 + i as u32, "y")];
        g.add(&facts(100 + i, i, "r", Severity::Low, &l));
    }
    assert!(g.open_count() <= 8, "{}", g.open_count());
    // Thousands of distinct rules on one process: listed up to the bound, all counted.
    let l = [p(7, 70, "z")];
    let names: Vec<String> = (0..5000).map(|i| format!("rule-{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        g.add(&facts(10_000 + i as u64, 200, n, Severity::Low, &l));
    }
    let i = g.incident(10_000).unwrap();
    assert_eq!((i.alert_count, i.rules.len()), (5000, MAX_RULES));
    // Times at the ends of u64 neither overflow nor panic.
    g.add(&facts(90_000, u64::MAX, "r", Severity::Low, &l));
    g.add(&facts(90_001, 0, "r", Severity::Low, &l));
}

#[test]
fn an_alert_that_knows_only_its_process_finds_the_incident() {
    // The exec alert knew the parent; a file alert of the same process
    // (the tree lookup failed) knows only the process.
    let t = tree();
    let mut g = Grouper::new(IncidentConfig::default());
    assert_eq!(g.add(&facts(1, 0, "exec-rule", Severity::Low, &t["useradd"])).incident_id, 1);
    let alone = [p(14, 140, "/usr/sbin/useradd")];
    assert_eq!(g.add(&facts(2, S, "file-rule", Severity::Low, &alone)).incident_id, 1);
}
