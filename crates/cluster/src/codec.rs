//! How diffsql's scans travel to workers: the cache scans are our own execution plans, so the engine needs a
//! codec for them. A scan is sent as its schema (DataFusion's protobuf form) and its parts (JSON: the units,
//! files and row groups it reads); the worker rebuilds the same plan.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{exec_datafusion_err, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use datafusion_proto::protobuf;
use diffsql_sql::tables::file_scan::{FileScanExec, FileScanParts};
use diffsql_sql::tables::scan::{VectorScanExec, VectorScanParts};
use prost::Message;

/// Encodes and decodes [`VectorScanExec`] and [`FileScanExec`].
#[derive(Debug, Default, Clone, Copy)]
pub struct DiffsqlCodec;

const VECTOR_SCAN: u8 = 1;
const FILE_SCAN: u8 = 2;

fn put_schema(buf: &mut Vec<u8>, schema: &Schema) -> Result<()> {
    let proto: protobuf::Schema = schema.try_into()?;
    let bytes = proto.encode_to_vec();
    buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    buf.extend_from_slice(&bytes);
    Ok(())
}

fn take_schema(buf: &mut &[u8]) -> Result<Schema> {
    let bad = || exec_datafusion_err!("a diffsql scan sent by the session is cut short");
    if buf.len() < 4 {
        return Err(bad());
    }
    let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if buf.len() < 4 + len {
        return Err(bad());
    }
    let proto = protobuf::Schema::decode(&buf[4..4 + len])
        .map_err(|e| exec_datafusion_err!("a diffsql scan's schema does not decode: {e}"))?;
    *buf = &buf[4 + len..];
    Ok((&proto).try_into()?)
}

fn json_error(e: serde_json::Error) -> datafusion::error::DataFusionError {
    exec_datafusion_err!("a diffsql scan does not decode: {e}")
}

impl PhysicalExtensionCodec for DiffsqlCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !inputs.is_empty() {
            return Err(exec_datafusion_err!(
                "a diffsql scan has no inputs, got {}",
                inputs.len()
            ));
        }
        let (&kind, mut rest) = buf
            .split_first()
            .ok_or_else(|| exec_datafusion_err!("an empty diffsql plan was sent"))?;
        let schema: SchemaRef = Arc::new(take_schema(&mut rest)?);
        match kind {
            VECTOR_SCAN => {
                let vector_type: DataType = take_schema(&mut rest)?.field(0).data_type().clone();
                let parts: VectorScanParts = serde_json::from_slice(rest).map_err(json_error)?;
                Ok(Arc::new(VectorScanExec::from_parts(parts, schema, vector_type)?))
            }
            FILE_SCAN => {
                let parts: FileScanParts = serde_json::from_slice(rest).map_err(json_error)?;
                Ok(Arc::new(FileScanExec::from_parts(parts, schema)?))
            }
            other => Err(exec_datafusion_err!(
                "unknown diffsql plan kind {other}: are the session and the worker the same diffsql version?"
            )),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        if let Some(scan) = node.downcast_ref::<VectorScanExec>() {
            buf.push(VECTOR_SCAN);
            put_schema(buf, &node.schema())?;
            put_schema(
                buf,
                &Schema::new(vec![Field::new("v", scan.vector_type().clone(), true)]),
            )?;
            serde_json::to_writer(&mut *buf, &scan.parts()).map_err(json_error)?;
            return Ok(());
        }
        if let Some(scan) = node.downcast_ref::<FileScanExec>() {
            buf.push(FILE_SCAN);
            put_schema(buf, &node.schema())?;
            serde_json::to_writer(&mut *buf, &scan.parts()).map_err(json_error)?;
            return Ok(());
        }
        Err(exec_datafusion_err!(
            "{} cannot run on a diffsql worker (only the cache scans are sent)",
            node.name()
        ))
    }
}
