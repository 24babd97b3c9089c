pub mod check_config;
pub mod demo;
pub mod replay;
pub mod serve;
pub mod simulate;
