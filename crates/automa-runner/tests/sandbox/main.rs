//! The sandbox, tested with the real helper, real Python and real attacks.

mod attacks;
mod environments;
mod hostile;
mod layers_off;
mod network;
mod positive;
mod support;
mod unprivileged;
