//! Control-plane schema migrations.
