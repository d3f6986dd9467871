//! Documentation sections shared by the functions, as DataFusion's `Documentation` expects.

use datafusion::logical_expr::DocSection;

/// Scalar functions over activation vectors.
pub const VECTOR_FUNCTIONS: DocSection = DocSection {
    include: true,
    label: "Vector functions",
    description: Some(
        "Functions over activation vectors: lists or fixed-size lists of float32, float16 or bfloat16 (uint16 bits).",
    ),
};

/// Aggregates over activation vectors.
pub const VECTOR_AGGREGATES: DocSection = DocSection {
    include: true,
    label: "Vector aggregates",
    description: Some("Aggregate functions over activation vectors."),
};
