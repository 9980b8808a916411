//! The life-cycle states of sites, operations and steps, and the kinds of operation, as
//! types shared by the database layer (they encode and decode as the strings stored in
//! the `state` and `kind` columns), the API schema (each is a string enum in the OpenAPI
//! document) and the code (a `match` on them is checked by the compiler).
//!
//! The strings are the stored values: renaming one is a migration, not an edit here.

use sqlx::{
    Database, Decode, Encode, MySql, Type,
    encode::IsNull,
    error::BoxDynError,
    mysql::{MySqlTypeInfo, MySqlValueRef},
};

/// A closed set of names stored as strings: serde, OpenAPI and sqlx all see the string.
macro_rules! string_enum {
    (
        $(#[doc = $doc:literal])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[doc = $doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            serde::Serialize, serde::Deserialize,
        )]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The stored (and serialised) name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $text, )+
                }
            }

            /// The value of a stored name; `None` for any other string.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $( $text => Some(Self::$variant), )+
                    _ => None,
                }
            }
        }

        // By hand: the derive does not see the variants' serde names through this macro.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                let description = [$($doc),*]
                    .iter()
                    .map(|line| line.trim())
                    .collect::<Vec<_>>()
                    .join("\n");
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .description(Some(description))
                    .enum_values(Some([$($text),+]))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Type<MySql> for $name {
            fn type_info() -> MySqlTypeInfo {
                <str as Type<MySql>>::type_info()
            }

            fn compatible(ty: &MySqlTypeInfo) -> bool {
                <str as Type<MySql>>::compatible(ty)
            }
        }

        impl<'q> Encode<'q, MySql> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut <MySql as Database>::ArgumentBuffer,
            ) -> Result<IsNull, BoxDynError> {
                <&str as Encode<'q, MySql>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> Decode<'r, MySql> for $name {
            fn decode(value: MySqlValueRef<'r>) -> Result<Self, BoxDynError> {
                let text = <&str as Decode<'r, MySql>>::decode(value)?;
                Self::parse(text).ok_or_else(|| {
                    format!(concat!("not a ", stringify!($name), ": {:?}"), text).into()
                })
            }
        }
    };
}

string_enum! {
    /// Where a site is in its life cycle.
    pub enum SiteState {
        /// Its create operation runs, or its agent has not reported ready yet.
        Provisioning = "provisioning",
        Active = "active",
        /// Its agent stopped being ready.
        Degraded = "degraded",
        Suspended = "suspended",
        Deleting = "deleting",
        Deleted = "deleted",
        /// Its create or delete failed: not what it should be (the operation says why).
        Failed = "failed",
    }
}

string_enum! {
    /// Where an operation is.
    pub enum OperationState {
        Pending = "pending",
        Running = "running",
        /// A step failed: the steps that ran are being taken back.
        Unwinding = "unwinding",
        Succeeded = "succeeded",
        Failed = "failed",
    }
}

impl OperationState {
    /// Still under way (the target is busy).
    pub const UNDER_WAY: [Self; 3] = [Self::Pending, Self::Running, Self::Unwinding];
}

string_enum! {
    /// Where a step of an operation is.
    pub enum StepState {
        Pending = "pending",
        Running = "running",
        /// Not yet (a move waits for its turn or for its new task); runs again soon.
        Waiting = "waiting",
        /// Failed retryably; runs again after a backoff.
        Retrying = "retrying",
        Done = "done",
        Failed = "failed",
        Undoing = "undoing",
        Undone = "undone",
    }
}

string_enum! {
    /// What an operation does; each kind is one saga (`platform/src/sagas/`).
    pub enum OperationKind {
        SiteCreate = "site.create",
        SiteDelete = "site.delete",
        SiteSuspend = "site.suspend",
        SiteResume = "site.resume",
        SiteUpdate = "site.update",
        SiteMove = "site.move",
        SiteBackup = "site.backup",
        BackupDelete = "backup.delete",
        /// A backup written back into its site, or into a new site (a clone).
        SiteRestore = "site.restore",
        /// A backup restored into a scratch database and folder and compared with its
        /// manifest (a drill), then the scratch dropped.
        BackupVerify = "backup.verify",
        /// A deleted site brought back under its own id and domain: its resources made
        /// again, then one of its backups (its final one) restored into them.
        SiteUndelete = "site.undelete",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_its_value() {
        for s in SiteState::ALL {
            assert_eq!(SiteState::parse(s.as_str()), Some(*s));
        }
        for s in OperationState::ALL {
            assert_eq!(OperationState::parse(s.as_str()), Some(*s));
        }
        for s in StepState::ALL {
            assert_eq!(StepState::parse(s.as_str()), Some(*s));
        }
        for k in OperationKind::ALL {
            assert_eq!(OperationKind::parse(k.as_str()), Some(*k));
            assert_eq!(
                serde_json::to_value(k).ok(),
                Some(serde_json::json!(k.as_str()))
            );
        }
        assert_eq!(SiteState::parse("Active"), None);
    }
}
