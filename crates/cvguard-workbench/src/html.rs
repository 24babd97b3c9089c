//! The HTML report.
use crate::backtest::BacktestResult;
use crate::tune::TuneResult;

pub fn backtest_report(_r: &BacktestResult) -> String {
    String::new()
}

pub fn tune_report(_r: &TuneResult) -> String {
    String::new()
}
