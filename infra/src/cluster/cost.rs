//! `cluster cost`: what the spec costs a month, from the provider's prices of droplet sizes
//! (DigitalOcean's `/v2/sizes`), and what that is per site at the workers' slots, beside the
//! reference architecture's estimate ($3,613 a month, $7.23 a site for 500 sites).
//!
//! Volumes and the load balancer are not in `/v2/sizes`: their list prices are constants here
//! ([`VOLUME_PER_GIB_MONTH`], [`LB_PER_NODE_MONTH`]), said so in the output.
use super::spec::{Checked, Role};
use std::collections::BTreeMap;
use std::fmt::Write;

/// DigitalOcean's list price of block storage, USD per GiB and month.
pub const VOLUME_PER_GIB_MONTH: f64 = 0.10;
/// DigitalOcean's list price of a regional load balancer, USD per node (size unit) and month.
pub const LB_PER_NODE_MONTH: f64 = 12.0;
/// The reference architecture's estimate (DESIGN.md).
pub const REFERENCE_MONTH: f64 = 3613.0;
pub const REFERENCE_SITES: u32 = 500;

#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub what: String,
    pub count: u32,
    pub unit: f64,
    pub total: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Cost {
    pub lines: Vec<Line>,
    pub total: f64,
    /// Site slots of the workers (count × slots).
    pub sites: u32,
    pub workers: u32,
    pub slots: u32,
}

impl Cost {
    pub fn per_site(&self) -> f64 {
        if self.sites == 0 {
            0.0
        } else {
            self.total / f64::from(self.sites)
        }
    }
}

/// The monthly cost of the spec with `prices` (size slug → USD a month). Fails on a size
/// the provider does not price (a typo, or one not offered).
pub fn cost(c: &Checked, prices: &BTreeMap<String, f64>) -> Result<Cost, String> {
    let mut lines = Vec::new();
    for (role, r) in &c.spec.roles {
        let unit = *prices.get(&r.size).ok_or_else(|| {
            format!(
                "roles.{role}.size: {:?} has no price in the provider's sizes",
                r.size
            )
        })?;
        lines.push(Line {
            what: format!("{role} droplets ({})", r.size),
            count: r.count,
            unit,
            total: unit * f64::from(r.count),
        });
        if let Some(v) = &r.volume {
            let unit = f64::from(v.size_gib) * VOLUME_PER_GIB_MONTH;
            lines.push(Line {
                what: format!("{role} volumes ({} GiB)", v.size_gib),
                count: r.count,
                unit,
                total: unit * f64::from(r.count),
            });
        }
    }
    let unit = LB_PER_NODE_MONTH * f64::from(c.spec.edge.size_unit);
    lines.push(Line {
        what: format!("load balancer ({} node)", c.spec.edge.size_unit),
        count: 1,
        unit,
        total: unit,
    });
    let total = lines.iter().map(|l| l.total).sum();
    let w = &c.spec.roles[&Role::Worker];
    Ok(Cost {
        lines,
        total,
        sites: w.count * w.slots.unwrap_or(0),
        workers: w.count,
        slots: w.slots.unwrap_or(0),
    })
}

/// The table `cluster cost` prints.
pub fn report(c: &Cost) -> String {
    let mut o = String::new();
    for l in &c.lines {
        let _ = writeln!(
            o,
            "{:<36} {:>3} × {:>9.2} = {:>10.2}",
            l.what, l.count, l.unit, l.total
        );
    }
    let _ = writeln!(o, "{:<36} {:>28.2} USD a month", "total", c.total);
    let _ = writeln!(
        o,
        "per site at {} sites ({} workers × {} slots): {:.2} USD a month",
        c.sites,
        c.workers,
        c.slots,
        c.per_site()
    );
    let ref_site = REFERENCE_MONTH / f64::from(REFERENCE_SITES);
    let _ = writeln!(
        o,
        "reference architecture: {REFERENCE_MONTH:.2} a month, {ref_site:.2} a site for {REFERENCE_SITES} sites; difference {:+.2} a month ({:+.2} a site)",
        c.total - REFERENCE_MONTH,
        c.per_site() - ref_site
    );
    let _ = writeln!(
        o,
        "(droplets: the provider's prices; volumes {VOLUME_PER_GIB_MONTH:.2}/GiB and the load balancer {LB_PER_NODE_MONTH:.2}/node: list prices, not from the API)"
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_adds_up_and_names_an_unpriced_size() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../configs/cluster.toml"
        ))
        .unwrap_or_default();
        let c = Checked::parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let prices: BTreeMap<String, f64> = [
            ("s-4vcpu-8gb", 48.0),
            ("s-8vcpu-16gb", 96.0),
            ("m-2vcpu-16gb", 84.0),
            ("m-4vcpu-32gb", 168.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let r = cost(&c, &prices).unwrap_or_else(|e| panic!("{e}"));
        // 3×48 + 3×84 + 20×96 + 3×168 + 2×48 + 2×48 = 3,012; volumes 3×50 + 2×100 = 350;
        // the load balancer 12.
        assert!((r.total - 3374.0).abs() < 1e-6, "{}", r.total);
        assert_eq!(r.sites, 500);
        assert!((r.per_site() - 6.748).abs() < 1e-6);
        assert!(
            report(&r).contains("difference -239.00 a month"),
            "{}",
            report(&r)
        );
        let mut missing = prices.clone();
        missing.remove("m-4vcpu-32gb");
        assert_eq!(
            cost(&c, &missing),
            Err(
                "roles.database.size: \"m-4vcpu-32gb\" has no price in the provider's sizes".into()
            )
        );
    }
}
