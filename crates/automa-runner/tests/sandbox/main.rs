//! The sandbox, tested with the real helper, real Python and real attacks.

mod attacks;
mod environments;
mod hostile;
mod layers_off;
mod network;
#[path = "../../../../tests/support/packages.rs"]
mod packages;
mod plain;
mod positive;
mod slots;
mod support;
mod unprivileged;
mod warm;
