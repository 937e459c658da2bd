//! The machine's wall clock at boot: the CMOS real-time clock's registers decoded to Unix time,
//! or `time=UNIX_SECONDS` from the command line, and which of the two to believe.
//!
//! * `time=UNIX_SECONDS` is the Unix time at the machine's reset (TSC 0): `qemu-smp` passes it
//!   when it starts QEMU, from the host's clock. It wins when present and well formed.
//! * Otherwise the RTC (MC146818-compatible: QEMU's, a PC's) is read once at boot. QEMU keeps it
//!   in UTC (`-rtc base=utc`, the default), as Flotilla assumes; its resolution is one second.
//! * Neither (no RTC, or registers that are not a date): the wall clock is unknown, and
//!   applications count Unix time from 0 at boot.
//!
//! The port I/O is in `arch::x86_64::rtc`; this module is the arithmetic, tested on the host.
#![forbid(unsafe_code)]

/// The RTC's time and date registers as read (register numbers in the comments), with status
/// register B, which says how they are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtcRegisters {
    /// 0x00.
    pub seconds: u8,
    /// 0x02.
    pub minutes: u8,
    /// 0x04 (bit 7 = PM in 12-hour mode).
    pub hours: u8,
    /// 0x07.
    pub day: u8,
    /// 0x08.
    pub month: u8,
    /// 0x09: year within the century.
    pub year: u8,
    /// 0x32: the century (QEMU and most PCs keep it there; ACPI's FADT names it).
    pub century: u8,
    /// 0x0B: bit 2 set = binary (else BCD), bit 1 set = 24-hour (else 12-hour).
    pub status_b: u8,
}

/// Status B bit: values are binary, not BCD.
const BINARY: u8 = 1 << 2;
/// Status B bit: hours run 0–23, not 1–12 with a PM bit.
const TWENTY_FOUR_HOUR: u8 = 1 << 1;

/// Where the wall clock came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `time=` on the command line.
    CommandLine,
    /// The CMOS real-time clock.
    Rtc,
}

/// The Unix time at a TSC reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootTime {
    /// Unix seconds...
    pub unix_seconds: u64,
    /// ...when the TSC read this.
    pub tsc: u64,
    /// Where it came from.
    pub source: Source,
}

/// Why `time=` was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadTimeOption;

impl core::fmt::Display for BadTimeOption {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("time= needs Unix seconds (a decimal number)")
    }
}

fn from_bcd(value: u8) -> Option<u8> {
    let (tens, ones) = (value >> 4, value & 0x0f);
    (tens < 10 && ones < 10).then_some(tens * 10 + ones)
}

/// Days since 1970-01-01 of a date in the proleptic Gregorian calendar (the civil-from-days
/// inverse: years counted from March so that the leap day ends a year).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (i64::from(month) + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The Unix time the registers hold, or `None` if they are not a valid date and time.
pub fn decode(registers: &RtcRegisters) -> Option<u64> {
    let binary = registers.status_b & BINARY != 0;
    let value = |raw: u8| if binary { Some(raw) } else { from_bcd(raw) };
    let seconds = value(registers.seconds)?;
    let minutes = value(registers.minutes)?;
    let pm = registers.hours & 0x80 != 0;
    let mut hours = value(registers.hours & 0x7f)?;
    if registers.status_b & TWENTY_FOUR_HOUR == 0 {
        if !(1..=12).contains(&hours) {
            return None;
        }
        hours = hours % 12 + if pm { 12 } else { 0 };
    }
    let day = value(registers.day)?;
    let month = value(registers.month)?;
    let year = value(registers.year)?;
    // A century register that is not 19..=99 (absent on some machines) means the 2000s.
    let century = value(registers.century)
        .filter(|century| (19..=99).contains(century))
        .unwrap_or(20);
    if seconds > 59 || minutes > 59 || hours > 23 || !(1..=12).contains(&month) || year > 99 {
        return None;
    }
    let full_year = i64::from(century) * 100 + i64::from(year);
    let days_in_month = match month {
        2 if full_year % 4 == 0 && (full_year % 100 != 0 || full_year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if day == 0 || day > days_in_month {
        return None;
    }
    let days = days_from_civil(full_year, u32::from(month), u32::from(day));
    let seconds =
        days * 86_400 + i64::from(hours) * 3600 + i64::from(minutes) * 60 + i64::from(seconds);
    u64::try_from(seconds).ok()
}

/// Reads `time=`'s value.
pub fn parse_time(value: &str) -> Result<u64, BadTimeOption> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BadTimeOption);
    }
    value.parse().map_err(|_| BadTimeOption)
}

/// The boot time from `time=` (its value, if the option is given) or else from the RTC
/// (`read_rtc` gives the registers and the TSC when they were read; it is called only if
/// needed). A malformed `time=` is returned as the error beside the RTC's answer.
pub fn boot_time(
    time_option: Option<&str>,
    read_rtc: impl FnOnce() -> Option<(RtcRegisters, u64)>,
) -> (Option<BootTime>, Option<BadTimeOption>) {
    let mut problem = None;
    if let Some(value) = time_option {
        match parse_time(value) {
            Ok(unix_seconds) => {
                let time = BootTime {
                    unix_seconds,
                    tsc: 0,
                    source: Source::CommandLine,
                };
                return (Some(time), None);
            }
            Err(error) => problem = Some(error),
        }
    }
    let from_rtc = read_rtc().and_then(|(registers, tsc)| {
        decode(&registers).map(|unix_seconds| BootTime {
            unix_seconds,
            tsc,
            source: Source::Rtc,
        })
    });
    (from_rtc, problem)
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS` (UTC), for the console.
pub fn format_utc(unix_seconds: u64, out: &mut impl core::fmt::Write) -> core::fmt::Result {
    let days = (unix_seconds / 86_400) as i64;
    let seconds_of_day = unix_seconds % 86_400;
    // Inverse of `days_from_civil`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    write!(
        out,
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        seconds_of_day / 3600,
        seconds_of_day / 60 % 60,
        seconds_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::string::String;

    fn registers(status_b: u8, values: [u8; 7]) -> RtcRegisters {
        let [seconds, minutes, hours, day, month, year, century] = values;
        RtcRegisters {
            seconds,
            minutes,
            hours,
            day,
            month,
            year,
            century,
            status_b,
        }
    }

    #[test]
    fn dates_count_days_from_1970() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }

    #[test]
    fn bcd_binary_and_twelve_hour_registers_decode() {
        // 2026-12-03 14:05:09 UTC is 1796306709.
        let expected = 1_796_306_709;
        let bcd_24 = registers(TWENTY_FOUR_HOUR, [0x09, 0x05, 0x14, 0x03, 0x12, 0x26, 0x20]);
        assert_eq!(decode(&bcd_24), Some(expected));
        let binary_24 = registers(BINARY | TWENTY_FOUR_HOUR, [9, 5, 14, 3, 12, 26, 20]);
        assert_eq!(decode(&binary_24), Some(expected));
        let bcd_12_pm = registers(0, [0x09, 0x05, 0x82, 0x03, 0x12, 0x26, 0x20]);
        assert_eq!(decode(&bcd_12_pm), Some(expected));
        // 12 AM is midnight, 12 PM noon.
        let midnight = registers(0, [0, 0, 0x12, 0x01, 0x01, 0x70, 0x19]);
        assert_eq!(decode(&midnight), Some(0));
        let noon = registers(0, [0, 0, 0x92, 0x01, 0x01, 0x70, 0x19]);
        assert_eq!(decode(&noon), Some(12 * 3600));
        // No century register: the 2000s.
        let no_century = registers(TWENTY_FOUR_HOUR, [0x09, 0x05, 0x14, 0x03, 0x12, 0x26, 0xff]);
        assert_eq!(decode(&no_century), Some(expected));
        let mut text = String::new();
        format_utc(expected, &mut text).unwrap();
        assert_eq!(text, "2026-12-03 14:05:09");
    }

    #[test]
    fn registers_that_are_not_a_date_are_refused() {
        let valid = [0x09, 0x05, 0x14, 0x03, 0x12, 0x26, 0x20];
        for (index, bad) in [
            (0, 0x60),
            (1, 0x1a),
            (2, 0x24),
            (3, 0x32),
            (4, 0x13),
            (3, 0x00),
        ] {
            let mut values = valid;
            values[index] = bad;
            assert_eq!(
                decode(&registers(TWENTY_FOUR_HOUR, values)),
                None,
                "{values:x?}"
            );
        }
        // 29 February only in leap years.
        let leap = registers(TWENTY_FOUR_HOUR, [0, 0, 0, 0x29, 0x02, 0x24, 0x20]);
        assert!(decode(&leap).is_some());
        let not_leap = registers(TWENTY_FOUR_HOUR, [0, 0, 0, 0x29, 0x02, 0x25, 0x20]);
        assert_eq!(decode(&not_leap), None);
        assert_eq!(decode(&registers(0, [0, 0, 0x13, 1, 1, 0x70, 0x19])), None);
    }

    #[test]
    fn the_command_line_wins_and_a_bad_value_falls_back_to_the_rtc() {
        let rtc = registers(BINARY | TWENTY_FOUR_HOUR, [9, 5, 14, 3, 12, 26, 20]);
        let (time, problem) = boot_time(Some("1800000000"), || panic!("RTC not needed"));
        assert_eq!(
            time,
            Some(BootTime {
                unix_seconds: 1_800_000_000,
                tsc: 0,
                source: Source::CommandLine
            })
        );
        assert_eq!(problem, None);
        let (time, problem) = boot_time(Some("soon"), || Some((rtc, 42)));
        assert_eq!(problem, Some(BadTimeOption));
        assert_eq!(
            time,
            Some(BootTime {
                unix_seconds: 1_796_306_709,
                tsc: 42,
                source: Source::Rtc
            })
        );
        assert_eq!(boot_time(None, || None), (None, None));
        let garbage = registers(0, [0xff; 7]);
        assert_eq!(boot_time(None, || Some((garbage, 1))), (None, None));
        assert_eq!(parse_time(""), Err(BadTimeOption));
        assert_eq!(parse_time("-5"), Err(BadTimeOption));
    }
}
