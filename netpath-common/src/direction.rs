//! The direction of a flow relative to a container: one word for policy
//! rules, policy verdicts in conntrack, events and the API.

/// `In`: traffic reaching the container (through a published port, the
/// remote is the original client). `Out`: traffic the container sends.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "user", serde(rename_all = "lowercase"))]
pub enum Direction {
    In = 0,
    Out = 1,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::In, Direction::Out];

    pub const fn name(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }

    pub const fn reversed(self) -> Direction {
        match self {
            Direction::In => Direction::Out,
            Direction::Out => Direction::In,
        }
    }
}

impl core::fmt::Display for Direction {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

impl core::str::FromStr for Direction {
    type Err = UnknownDirection;

    fn from_str(s: &str) -> Result<Direction, UnknownDirection> {
        match s {
            "in" => Ok(Direction::In),
            "out" => Ok(Direction::Out),
            _ => Err(UnknownDirection),
        }
    }
}

/// A direction that is neither `in` nor `out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownDirection;

impl core::fmt::Display for UnknownDirection {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("a direction is `in` or `out`")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in Direction::BOTH {
            assert_eq!(d.name().parse::<Direction>(), Ok(d));
            assert_eq!(d.reversed().reversed(), d);
        }
        assert_eq!("sideways".parse::<Direction>(), Err(UnknownDirection));
    }
}
