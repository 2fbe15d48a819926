//! The policy section of `RESULTS.md`.

use std::fmt::Write as _;

use super::{
    bed::HIT_PORT,
    options::Section,
    policy::PolicyFigures,
    policy_bed::PolicyVariant,
    report::{section_targets, values},
    results::{Results, Series},
};

pub fn section(s: &mut String, r: &Results, p: &PolicyFigures) {
    let largest = p.largest();
    let _ = writeln!(s, "## Policy: inbound rules on a published port\n");
    section_targets(s, r, Section::Policy);
    let _ = writeln!(
        s,
        "Short connections per second from the world (198.18.0.2) to published port {HIT_PORT} of the \
         container, {} client threads, with N inbound rules of which only the last-added one matches \
         the client: N-1 denies of other /32s (100.64.0.0 upwards), then the allow of 198.18.0.2/32, \
         everything else denied for the container. 0 rules: no policy at all. Medians over {} rounds; \
         \"kept\" is the rate over the same variant's rate with 0 rules.\n",
        r.method.client_threads, r.method.rounds
    );
    let _ = write!(s, "| rules |");
    for v in &p.variants {
        let _ = write!(s, " {} | kept |", v.variant.name());
    }
    let _ = write!(s, "\n|---:|");
    for _ in &p.variants {
        s.push_str("---:|---:|");
    }
    s.push('\n');
    for &rules in &p.rules {
        let _ = write!(s, "| {rules} |");
        for v in &p.variants {
            let kept = v.kept(rules).map(|k| format!("{k:.2}")).unwrap_or_else(|| "-".into());
            let _ = write!(s, " {:.0} | {kept} |", v.rate_at(rules).unwrap_or(f64::NAN));
        }
        s.push('\n');
    }
    let _ = writeln!(s, "\nPer round (connections/s, failed connections):\n");
    for v in &p.variants {
        let cells: Vec<String> = v
            .conn_rate
            .iter()
            .map(|pt| {
                let errors: Vec<String> = pt.errors.iter().map(u64::to_string).collect();
                format!("{} rules: {} (errors {})", pt.rules, values(&pt.per_sec, 0), errors.join("/"))
            })
            .collect();
        let _ = writeln!(s, "- {}: {}", v.variant.name(), cells.join("; "));
    }
    s.push('\n');

    let _ = writeln!(s, "### Adding one more rule when {largest} exist\n");
    let _ = writeln!(s, "| variant | operation timed | samples | median ms | min - max ms |");
    let _ = writeln!(s, "|---|---|---:|---:|---|");
    let row = |s: &mut String, name: &str, what: &str, ms: &Series| {
        let min = ms.values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = ms.values.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(s, "| {name} | {what} | {} | {:.3} | {min:.3} - {max:.3} |", ms.values.len(), ms.median);
    };
    for v in &p.variants {
        let name = v.variant.name();
        if let Some(ms) = &v.add_one_ms {
            let what = match v.variant {
                PolicyVariant::Netpath => {
                    "`POST /v1/policies` (deny in a new /32) round trip, in-process client, no flow tracked"
                }
                _ => "`iptables -I DOCKER-USER -s <cidr> -d <container>/32 -j DROP` wall time",
            };
            row(s, name, what, ms);
        }
        if let Some(t) = &v.add_one_tracked {
            let what = format!(
                "the same right after {} short connections, {} conntrack entries tracked",
                t.connections, t.ct_entries
            );
            row(s, name, &what, &t.ms);
        }
    }
    let _ = writeln!(
        s,
        "\nnetpath re-judges every tracked flow under the new policy on each rule change (to cut the \
         established flows it now denies); the second netpath row shows what that costs with the flows \
         of {} recent connections still in the table. The iptables figures are whole process runs, \
         started from a thread inside the host namespace.\n",
        p.tracked_connections
    );

    let _ = writeln!(s, "### Getting to N rules (informational)\n");
    let _ = writeln!(
        s,
        "iptables: `iptables-restore` of the whole layout; netpath: one bulk API call (`{{\"rules\": \
         [...]}}`, all or nothing) with the rules added since the previous count (plus the default and \
         taking the client's allow out and in again), after \
         `DELETE /v1/conntrack` (untimed; see the notes) so that no call re-judges a previous load \
         window's flows. Milliseconds.\n"
    );
    let _ = write!(s, "| variant |");
    for rules in &p.rules {
        let _ = write!(s, " {rules} |");
    }
    let _ = write!(s, "\n|---|");
    for _ in &p.rules {
        s.push_str("---:|");
    }
    s.push('\n');
    for v in &p.variants {
        let _ = write!(s, "| {} |", v.variant.name());
        for (_, ms) in &v.set_rules_ms {
            let _ = write!(s, " {ms:.1} |");
        }
        s.push('\n');
    }
    s.push('\n');

    let _ = writeln!(
        s,
        "How: every variant has its own namespaces as in the published-ports section, one published \
         port ({HIT_PORT} to the container's port 80) and the server in the container.\n\n\
         - **iptables**: Docker 20.10's layout with the rules in `DOCKER-USER`, the chain Docker keeps \
           for the operator's rules: `-s <cidr> -d <container>/32 -j DROP` per rule, `-s 198.18.0.2/32 -d \
           <container>/32 -j ACCEPT`, then `-d <container>/32 -j DROP` for the default; loaded whole \
           with `iptables-restore`. `FORWARD` jumps to `DOCKER-USER` first, so every packet of every \
           flow, both ways, walks the chain.\n\
         - **iptables-ct**: the same with `-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN` as the \
           first rule of `DOCKER-USER` (also with 0 rules), as a careful operator writes it: only a \
           connection's first packets walk the rules.\n\
         - **netpath**: netpathd with its default settings; `PUT /v1/policies/c1/default \
           {{\"direction\": \"in\", \"action\": \"deny\"}}`, then the rules in one `POST /v1/policies {{\"rules\": [{{\"container\": \
           \"c1\", \"action\": \"deny\", \"direction\": \"in\", \"cidr\": \"100.64.x.y/32\"}}, ...]}}` and \
           the client's allow last, through `netpath_userspace::client::Client` in-process. A new flow is \
           judged once (one LPM lookup), later packets pass on the conntrack verdict.\n"
    );
    super::report::setup_notes(s, p.variants.iter().flat_map(|v| &v.notes));
}
