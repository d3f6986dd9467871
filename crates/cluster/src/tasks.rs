//! How many workers a scan goes to, and how it is cut for them: a scan asks for one task per worker when it
//! has a unit for each, and each task gets units of about equal rows.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_distributed::{
    DesiredTaskCountEvent, DesiredTaskCountEventResponse, DistributedLeafExec, ScaleUpLeafNodeEvent,
    ScaleUpLeafNodeEventResponse,
};
use diffsql_sql::tables::file_scan::FileScanExec;
use diffsql_sql::tables::scan::VectorScanExec;

/// The tasks a diffsql scan would use: one per unit it reads (the planner caps this at the workers there are).
pub fn desired_task_count(event: DesiredTaskCountEvent) -> Option<Result<DesiredTaskCountEventResponse>> {
    let units = if let Some(scan) = event.plan.downcast_ref::<VectorScanExec>() {
        scan.unit_count()
    } else {
        event.plan.downcast_ref::<FileScanExec>()?.file_count()
    };
    Some(Ok(DesiredTaskCountEventResponse::desired(units.max(1))))
}

/// A diffsql scan cut into one scan per task.
pub fn scale_up_leaf_node(event: ScaleUpLeafNodeEvent) -> Option<Result<ScaleUpLeafNodeEventResponse>> {
    fn plans<T: ExecutionPlan + 'static>(scans: Vec<T>) -> Vec<Arc<dyn ExecutionPlan>> {
        scans
            .into_iter()
            .map(|s| Arc::new(s) as Arc<dyn ExecutionPlan>)
            .collect()
    }
    let variants = if let Some(scan) = event.plan.downcast_ref::<VectorScanExec>() {
        plans(scan.split(event.task_count))
    } else {
        plans(event.plan.downcast_ref::<FileScanExec>()?.split(event.task_count))
    };
    Some(
        DistributedLeafExec::try_new(Arc::clone(event.plan), variants)
            .map(|leaf| ScaleUpLeafNodeEventResponse::new(Arc::new(leaf))),
    )
}
