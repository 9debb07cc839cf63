//! jitctl: the admin's command line. One module per group of subcommands;
//! every command that talks to the agent is one API request.

pub mod args;
pub mod exit;
pub mod local;
pub mod render;
pub mod run;
