//! The prices file (`bench/prices/aws-us-east-1.toml`): every dollar figure the cost model
//! and the projection use, each with its unit, date and source, so a report's dollars can
//! be traced to a dated public price list. [`Prices::check_covers`] refuses a study that
//! would use a resource without a price before any training runs, and [`Prices::stale`]
//! lists the prices dated more than a year before a run, which the report flags.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::config::{LambdaArch, StudyConfig};
use super::error::StudyError;

/// One price with its provenance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Dollars per `unit`.
    pub value: f64,
    pub unit: String,
    /// When the value was taken from `source`: `YYYY`, `YYYY-MM` or `YYYY-MM-DD`
    /// ([`Day::earliest_of`]).
    pub date: String,
    /// URL of the public price list.
    pub source: String,
}

/// An EC2 on-demand price plus the speed the projection gives a peer of that type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstancePrice {
    /// Dollars per instance-hour.
    pub value: f64,
    pub unit: String,
    pub vcpus: u32,
    /// Gradient-step throughput of one peer on this type relative to the table's
    /// reference type (1.0); an estimate documented in the file.
    pub relative_speed: f64,
    pub date: String,
    pub source: String,
}

/// Lambda prices per GB-second and per request, for both instruction sets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LambdaPrices {
    pub x86_gb_second: Price,
    pub x86_request: Price,
    pub arm64_gb_second: Price,
    pub arm64_request: Price,
}

impl LambdaPrices {
    /// Dollars per GB-second for `arch`.
    pub fn gb_second(&self, arch: LambdaArch) -> f64 {
        match arch {
            LambdaArch::X86_64 => self.x86_gb_second.value,
            LambdaArch::Arm64 => self.arm64_gb_second.value,
        }
    }

    /// Dollars per request for `arch`.
    pub fn request(&self, arch: LambdaArch) -> f64 {
        match arch {
            LambdaArch::X86_64 => self.x86_request.value,
            LambdaArch::Arm64 => self.arm64_request.value,
        }
    }
}

/// Step Functions prices.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepFunctionsPrices {
    /// Standard workflows, per state transition.
    pub standard_transition: Price,
}

/// S3 Standard prices.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Prices {
    /// Per PUT, COPY, POST or LIST request.
    pub put_request: Price,
    /// Per GET or SELECT request.
    pub get_request: Price,
    /// Per GB-month stored (listed for completeness; runs of minutes store next to nothing).
    pub storage_gb_month: Price,
}

/// The whole prices file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    pub region: String,
    pub currency: String,
    /// EC2 on-demand by instance type.
    pub ec2: BTreeMap<String, InstancePrice>,
    pub lambda: LambdaPrices,
    pub step_functions: StepFunctionsPrices,
    pub s3: S3Prices,
    /// Amazon MQ broker-hours by broker type.
    pub mq: BTreeMap<String, Price>,
    /// The file these prices came from, for messages and the report.
    #[serde(skip)]
    pub source_file: String,
}

impl Prices {
    /// Reads, parses and validates a prices file.
    pub fn load(path: &Path) -> Result<Prices, StudyError> {
        let text = std::fs::read_to_string(path).map_err(|e| StudyError::io(path, e))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates prices held in memory; `file` names them in errors.
    pub fn from_toml_str(text: &str, file: &str) -> Result<Prices, StudyError> {
        Self::parse(text, file)
    }

    fn parse(text: &str, file: &str) -> Result<Prices, StudyError> {
        let mut prices: Prices = toml::from_str(text).map_err(|e| StudyError::Parse {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        prices.source_file = file.to_string();
        prices.validate()?;
        Ok(prices)
    }

    /// Every price finite and non-negative, every speed and vCPU count positive, every
    /// provenance field filled in.
    pub fn validate(&self) -> Result<(), StudyError> {
        for (key, price) in self.entries() {
            self.check_price(&key, price)?;
        }
        for (name, p) in &self.ec2 {
            let key = format!("ec2.\"{name}\"");
            self.check_amount(&format!("{key}.value"), p.value)?;
            self.check_text(&key, &p.unit, &p.date, &p.source)?;
            if p.vcpus < 1 {
                return Err(self.invalid(&format!("{key}.vcpus"), "must be at least 1, got 0"));
            }
            if !(p.relative_speed.is_finite() && p.relative_speed > 0.0) {
                return Err(self.invalid(
                    &format!("{key}.relative_speed"),
                    &format!("must be a positive number, got {}", p.relative_speed),
                ));
            }
        }
        Ok(())
    }

    /// Fails naming the first resource `config` would use (peer instance types, the broker
    /// type, the projection's instance types) that this file has no price for.
    pub fn check_covers(&self, config: &StudyConfig) -> Result<(), StudyError> {
        let mut needed = vec![("instance_type".to_string(), config.instance_type.clone())];
        for (i, p) in config.peers.iter().enumerate() {
            if let Some(t) = &p.instance_type {
                needed.push((format!("peer[{i}].instance_type"), t.clone()));
            }
        }
        for (i, t) in config.projection.instance_types.iter().enumerate() {
            needed.push((format!("projection.instance_types[{i}]"), t.clone()));
        }
        for (needed_by, t) in needed {
            if !self.ec2.contains_key(&t) {
                return Err(StudyError::MissingPrice {
                    file: self.source_file.clone(),
                    key: format!("ec2.\"{t}\""),
                    needed_by: format!("{}: {needed_by}", config.file_label()),
                });
            }
        }
        if !self.mq.contains_key(&config.broker_type) {
            return Err(StudyError::MissingPrice {
                file: self.source_file.clone(),
                key: format!("mq.\"{}\"", config.broker_type),
                needed_by: format!("{}: broker_type", config.file_label()),
            });
        }
        Ok(())
    }

    /// The EC2 entry for `instance_type`, or an error naming it.
    pub fn instance(&self, instance_type: &str) -> Result<&InstancePrice, StudyError> {
        self.ec2
            .get(instance_type)
            .ok_or_else(|| StudyError::MissingPrice {
                file: self.source_file.clone(),
                key: format!("ec2.\"{instance_type}\""),
                needed_by: "a peer's instance type".into(),
            })
    }

    /// Dollars per broker-hour for `broker_type`, or an error naming it.
    pub fn broker_hour(&self, broker_type: &str) -> Result<f64, StudyError> {
        self.mq
            .get(broker_type)
            .map(|p| p.value)
            .ok_or_else(|| StudyError::MissingPrice {
                file: self.source_file.clone(),
                key: format!("mq.\"{broker_type}\""),
                needed_by: "broker_type".into(),
            })
    }

    /// Every plain price with its key, in file order of the sections.
    pub fn entries(&self) -> Vec<(String, &Price)> {
        let mut out = vec![
            (
                "lambda.x86_gb_second".to_string(),
                &self.lambda.x86_gb_second,
            ),
            ("lambda.x86_request".to_string(), &self.lambda.x86_request),
            (
                "lambda.arm64_gb_second".to_string(),
                &self.lambda.arm64_gb_second,
            ),
            (
                "lambda.arm64_request".to_string(),
                &self.lambda.arm64_request,
            ),
            (
                "step_functions.standard_transition".to_string(),
                &self.step_functions.standard_transition,
            ),
            ("s3.put_request".to_string(), &self.s3.put_request),
            ("s3.get_request".to_string(), &self.s3.get_request),
            ("s3.storage_gb_month".to_string(), &self.s3.storage_gb_month),
        ];
        out.extend(self.mq.iter().map(|(k, p)| (format!("mq.\"{k}\""), p)));
        out
    }

    /// Every price's key and `date`, the EC2 entries first: what [`Prices::stale`] looks
    /// at.
    pub fn dates(&self) -> Vec<(String, &str)> {
        let ec2 = self
            .ec2
            .iter()
            .map(|(name, p)| (format!("ec2.\"{name}\""), p.date.as_str()));
        let rest = self
            .entries()
            .into_iter()
            .map(|(key, p)| (key, p.date.as_str()));
        ec2.chain(rest).collect()
    }

    /// The prices dated more than a year before `today`, in [`Prices::dates`] order: a
    /// cost computed from them may no longer be what AWS charges. A `YYYY-MM` date counts
    /// from the month's first day and a `YYYY` date from January 1 (the earliest day it
    /// can mean), so a price is flagged once its oldest reading is over a year old.
    pub fn stale(&self, today: Day) -> Vec<StalePrice> {
        self.dates()
            .into_iter()
            .filter(|(_, date)| {
                Day::earliest_of(date).is_ok_and(|d| d.more_than_a_year_before(today))
            })
            .map(|(key, date)| StalePrice {
                key,
                date: date.to_string(),
            })
            .collect()
    }

    fn check_price(&self, key: &str, p: &Price) -> Result<(), StudyError> {
        self.check_amount(&format!("{key}.value"), p.value)?;
        self.check_text(key, &p.unit, &p.date, &p.source)
    }

    fn check_amount(&self, key: &str, value: f64) -> Result<(), StudyError> {
        if !value.is_finite() || value < 0.0 {
            return Err(self.invalid(
                key,
                &format!("must be a finite, non-negative number of dollars, got {value}"),
            ));
        }
        Ok(())
    }

    fn check_text(
        &self,
        key: &str,
        unit: &str,
        date: &str,
        source: &str,
    ) -> Result<(), StudyError> {
        for (field, value) in [("unit", unit), ("date", date), ("source", source)] {
            if value.trim().is_empty() {
                return Err(self.invalid(&format!("{key}.{field}"), "must not be empty"));
            }
        }
        if let Err(message) = Day::earliest_of(date) {
            return Err(self.invalid(&format!("{key}.date"), &message));
        }
        if !source.starts_with("https://") && !source.starts_with("http://") {
            return Err(self.invalid(
                &format!("{key}.source"),
                &format!("must be the URL of the price list, got {source:?}"),
            ));
        }
        Ok(())
    }

    fn invalid(&self, key: &str, message: &str) -> StudyError {
        StudyError::invalid(&self.source_file, key, message)
    }
}

/// A price dated more than a year before the run ([`Prices::stale`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StalePrice {
    /// The entry's key as the report's price table names it (`ec2."t3.medium"`,
    /// `lambda.x86_gb_second`, ...).
    pub key: String,
    /// Its `date` as written in the file.
    pub date: String,
}

/// A calendar day (Gregorian, UTC): the date of a run, and the day a price's `date`
/// begins. Ordered by year, month, day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Day {
    pub year: i32,
    pub month: u32,
    pub day: u32,
}

impl Day {
    /// The day, or `None` when no such day exists (month 13, February 30, ...).
    pub fn new(year: i32, month: u32, day: u32) -> Option<Day> {
        let month = time::Month::try_from(u8::try_from(month).ok()?).ok()?;
        time::Date::from_calendar_date(year, month, u8::try_from(day).ok()?)
            .ok()
            .map(Day::from)
    }

    /// Today in UTC, from the system clock: the run's date for the report.
    pub fn today_utc() -> Day {
        time::OffsetDateTime::now_utc().date().into()
    }

    /// The day `days` days after 1970-01-01.
    pub fn from_unix_days(days: i64) -> Day {
        (time::OffsetDateTime::UNIX_EPOCH.date() + time::Duration::days(days)).into()
    }

    /// The earliest day a price's `date` can mean: `YYYY-MM-DD` itself, `YYYY-MM` the
    /// month's first day, `YYYY` January 1. Anything else is refused with the reason.
    pub fn earliest_of(date: &str) -> Result<Day, String> {
        let bad = || format!("must be a date as YYYY, YYYY-MM or YYYY-MM-DD, got {date:?}");
        let parts: Vec<&str> = date.trim().split('-').collect();
        let widths = [4, 2, 2];
        if parts.len() > 3
            || parts
                .iter()
                .zip(widths)
                .any(|(p, w)| p.len() != w || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(bad());
        }
        let number = |i: usize| parts.get(i).map_or(Ok(1), |p| p.parse::<u32>());
        let (year, month, day) = match (number(0), number(1), number(2)) {
            (Ok(y), Ok(m), Ok(d)) => (y as i32, m, d),
            _ => return Err(bad()),
        };
        Day::new(year, month, day).ok_or_else(bad)
    }

    /// Whether a year after `self` is still before `today` (a year after February 29
    /// counts as March 1).
    pub fn more_than_a_year_before(self, today: Day) -> bool {
        (self.year + 1, self.month, self.day) < (today.year, today.month, today.day)
    }
}

impl From<time::Date> for Day {
    fn from(date: time::Date) -> Day {
        Day {
            year: date.year(),
            month: u8::from(date.month()).into(),
            day: date.day().into(),
        }
    }
}

impl std::fmt::Display for Day {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}
