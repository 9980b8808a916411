//! Host-table loads taken in groups ([`crate::group`]).
//!
//! Every Varnish instance holds one host table, compiled into a VCL on each load (a C
//! compile: 1–3 s on the lab). Loads take turns, so twenty sites created at once used to
//! queue twenty compiles, each for a table that differed from the last by one site. Now a
//! caller leaves its change (one site's entry) in the open batch and waits for the turn;
//! whoever gets the turn takes every change waiting, loads one table with all of them and
//! gives each waiter the result. A caller whose change was loaded by someone else's turn
//! returns as soon as it gets the turn, without reading or loading anything.
//!
//! The table is read from the control-plane database inside the turn (every live site's
//! domains), so a change is never lost: a site's rows are committed before its step asks
//! for a load, and the overrides only say how one site's entry differs from its row (left
//! out while it is deleted, suspended while it is suspended).

use std::collections::BTreeSet;

use backends::{DomainName, SiteResourceId, varnish::HostState};

use crate::group::Group;

/// One site's entry as its step wants it loaded (`None`: left out).
pub type Override = (SiteResourceId, Option<HostState>);

/// What a site's step asks of the table: its entry's state (`None`: left out) and the
/// domains the site had when it asked, with which the turn's leader checks, without
/// reading anything, whether the table a load before it left already holds the site.
pub type Want = (Option<HostState>, BTreeSet<DomainName>);

/// The host table's open batch and turn: one per process (loads of other replicas are
/// converged by the name of the loaded VCL: the same table has the same name).
pub type HostLoads = Group<SiteResourceId, Want, ()>;

/// An empty batch.
pub fn host_loads() -> HostLoads {
    Group::new("the page cache did not load the site's hosts")
}
