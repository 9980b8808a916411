//! `infra`: provisions and evolves the cluster. Today that is the local lab (issue 3): a real
//! multi-node swarm and data tier on one machine, built from network namespaces, one dockerd
//! per node and real servers (Galera, HAProxy, Redis + Sentinel, GlusterFS, Varnish, Traefik,
//! an S3 server). The binary `pressdock-infra` is a thin CLI over [`lab`] and [`cluster`]
//! (the production cluster declared in `configs/cluster.toml`, planned and applied on
//! DigitalOcean); [`guard`] confines site tasks' networks on each node.
pub mod cluster;
pub mod guard;
pub mod lab;
pub mod platform_config;
pub mod routes;
