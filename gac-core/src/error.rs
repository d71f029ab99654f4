//! The one error type of gac-core: every variant names the value, field or member at fault.

use std::fmt;

/// A setting that gac-core checks, so that a front end can name it in its own terms (a flag,
/// a TOML key, a request field) without reading the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// A draw's temperature.
    Temperature,
    /// A draw's top-p.
    TopP,
    /// The top-k union's K.
    UnionTopK,
    /// The weights as a whole (their number, or all zero).
    Weights,
    /// One member's weight.
    Weight(usize),
    /// The gate member.
    Gate,
    /// The gate's threshold.
    Threshold,
    /// What an unsure step does.
    WhenUnsure,
    /// The mode by name.
    Mode,
    /// A grammar (or JSON mode) that constrains the output.
    Grammar,
    /// A JSON schema that constrains the output.
    JsonSchema,
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Setting::Temperature => write!(f, "temperature"),
            Setting::TopP => write!(f, "top_p"),
            Setting::UnionTopK => write!(f, "union_top_k"),
            Setting::Weights => write!(f, "weights"),
            Setting::Weight(i) => write!(f, "member[{i}].weight"),
            Setting::Gate => write!(f, "gate"),
            Setting::Threshold => write!(f, "threshold"),
            Setting::WhenUnsure => write!(f, "when_unsure"),
            Setting::Mode => write!(f, "mode"),
            Setting::Grammar => write!(f, "grammar"),
            Setting::JsonSchema => write!(f, "json_schema"),
        }
    }
}

/// Everything that can go wrong while building or running an ensemble.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// An ensemble needs at least one member.
    NoMembers,
    /// A configuration value is out of range or inconsistent; `field` names it.
    Config {
        /// The field at fault, e.g. `threshold` or `member[1].weight`.
        field: String,
        /// What is wrong with it, including the bad value.
        message: String,
    },
    /// One of the settings gac-core checks itself is out of range or inconsistent.
    Setting {
        /// The setting at fault.
        setting: Setting,
        /// What is wrong with it, including the bad value.
        message: String,
    },
    /// The prompt is empty.
    EmptyPrompt,
    /// The prompt does not fit into a member's context window.
    PromptTooLong {
        /// The member's name.
        member: String,
        /// Prompt length in that member's tokens.
        tokens: usize,
        /// The member's context size.
        context: usize,
    },
    /// A member's context window is full.
    ContextFull {
        /// The member's name.
        member: String,
        /// The member's context size.
        context: usize,
    },
    /// A vocabulary could not be built or used.
    Vocab {
        /// Which vocabulary (a member name or a file).
        source: String,
        /// What is wrong.
        message: String,
    },
    /// A member failed (runtime error, panic or a dropped worker).
    Member {
        /// The member's name.
        member: String,
        /// What went wrong.
        message: String,
    },
    /// The generation was interrupted (see [`crate::Interrupt`]) while a member waited.
    Interrupted {
        /// The member that gave up waiting.
        member: String,
    },
    /// No union token received any probability mass at a step.
    ZeroMass {
        /// The step (0-based generated token index).
        step: usize,
    },
    /// The grammar's parser failed during a generation (a compile error is
    /// [`Setting::Grammar`]).
    Constraint {
        /// The step (0-based generated token index).
        step: usize,
        /// What the parser said.
        message: String,
    },
}

impl Error {
    /// Shorthand for [`Error::Setting`].
    pub fn setting(setting: Setting, message: impl Into<String>) -> Self {
        Error::Setting {
            setting,
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::Config`].
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::Member`].
    pub fn member(member: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Member {
            member: member.into(),
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::Vocab`].
    pub fn vocab(source: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Vocab {
            source: source.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoMembers => write!(f, "an ensemble needs at least one member (none given)"),
            Error::Config { field, message } => write!(f, "invalid {field}: {message}"),
            Error::Setting { setting, message } => write!(f, "invalid {setting}: {message}"),
            Error::EmptyPrompt => write!(f, "the prompt is empty"),
            Error::PromptTooLong {
                member,
                tokens,
                context,
            } => write!(
                f,
                "the prompt is {tokens} tokens for member '{member}', longer than its context of {context} tokens"
            ),
            Error::ContextFull { member, context } => {
                write!(f, "member '{member}' filled its context of {context} tokens")
            }
            Error::Vocab { source, message } => write!(f, "vocabulary of {source}: {message}"),
            Error::Member { member, message } => write!(f, "member '{member}' failed: {message}"),
            Error::Interrupted { member } => {
                write!(f, "interrupted while member '{member}' waited")
            }
            Error::ZeroMass { step } => {
                write!(f, "no token received any probability at step {step}")
            }
            Error::Constraint { step, message } => {
                write!(f, "the grammar's parser failed at step {step}: {message}")
            }
        }
    }
}

impl std::error::Error for Error {}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
