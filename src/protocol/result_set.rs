//! Builders for the replies of a simple query that the proxy answers itself (the
//! admin console): RowDescription with text-format columns of a few types,
//! DataRow, CommandComplete, EmptyQueryResponse and NoticeResponse.

use bytes::{BufMut, BytesMut};
use pgwire::messages::data::{DataRow, FieldDescription, RowDescription};
use pgwire::messages::response::{CommandComplete, EmptyQueryResponse, NoticeResponse};
use pgwire::messages::Message;

/// A column's type as PostgreSQL names it, with its OID and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Int4,
    Int8,
    Numeric,
}

impl ColumnType {
    pub fn oid(self) -> u32 {
        match self {
            ColumnType::Text => 25,
            ColumnType::Int4 => 23,
            ColumnType::Int8 => 20,
            ColumnType::Numeric => 1700,
        }
    }

    fn size(self) -> i16 {
        match self {
            ColumnType::Text | ColumnType::Numeric => -1,
            ColumnType::Int4 => 4,
            ColumnType::Int8 => 8,
        }
    }
}

fn put<M: Message>(buf: &mut BytesMut, message: &M) {
    if let Err(e) = message.encode(buf) {
        tracing::error!(error = %e, "cannot encode a protocol message");
    }
}

/// RowDescription for text-format columns.
pub fn row_description(buf: &mut BytesMut, columns: &[(&str, ColumnType)]) {
    let fields = columns
        .iter()
        .map(|(name, kind)| {
            FieldDescription::new((*name).to_string(), 0, 0, kind.oid(), kind.size(), -1, 0)
        })
        .collect();
    put(buf, &RowDescription::new(fields));
}

/// DataRow of text values; None is NULL.
pub fn data_row(buf: &mut BytesMut, values: &[Option<&str>]) {
    let mut data = BytesMut::new();
    for value in values {
        match value {
            Some(text) => {
                data.put_i32(text.len() as i32);
                data.put_slice(text.as_bytes());
            }
            None => data.put_i32(-1),
        }
    }
    put(buf, &DataRow::new(data, values.len() as i16));
}

pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    put(buf, &CommandComplete::new(tag.into()));
}

pub fn empty_query_response(buf: &mut BytesMut) {
    put(buf, &EmptyQueryResponse::new());
}

/// NoticeResponse with severity NOTICE, SQLSTATE 00000, a message and a detail.
pub fn notice(buf: &mut BytesMut, message: &str, detail: &str) {
    let fields = vec![
        (b'S', "NOTICE".to_string()),
        (b'V', "NOTICE".to_string()),
        (b'C', "00000".to_string()),
        (b'M', message.to_string()),
        (b'D', detail.to_string()),
    ];
    put(buf, &NoticeResponse::new(fields));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::tag;

    #[test]
    fn a_row_description_and_a_row_encode_as_postgres_does() {
        let mut buf = BytesMut::new();
        row_description(
            &mut buf,
            &[("name", ColumnType::Text), ("n", ColumnType::Int4)],
        );
        assert_eq!(buf[0], tag::ROW_DESCRIPTION);
        // count, then "name\0" + 18 bytes, "n\0" + 18 bytes.
        assert_eq!(buf.len(), 1 + 4 + 2 + 5 + 18 + 2 + 18);
        buf.clear();
        data_row(&mut buf, &[Some("ab"), None]);
        assert_eq!(
            &buf[..],
            &[
                tag::DATA_ROW,
                0,
                0,
                0,
                16,
                0,
                2,
                0,
                0,
                0,
                2,
                b'a',
                b'b',
                255,
                255,
                255,
                255
            ]
        );
    }
}
