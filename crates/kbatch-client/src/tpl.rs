//! Conversions between kbatch's offsets and librdkafka's topic-partition lists.

use kbatch_core::{Offset, TopicPartition};
use rdkafka::TopicPartitionList;

use crate::error::{Error, Result};

/// Builds a list with offsets and optional commit metadata.
pub(crate) fn offsets_to_tpl<'a>(
    items: impl IntoIterator<Item = (&'a TopicPartition, Offset, Option<&'a str>)>,
) -> Result<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for (tp, off, meta) in items {
        tpl.add_partition_offset(&tp.topic, tp.partition, rdkafka::Offset::Offset(off.0))
            .map_err(|e| Error::kafka(format!("set offset {off} for {tp}"), e))?;
        if let Some(m) = meta
            && let Some(mut el) = tpl.find_partition(&tp.topic, tp.partition)
        {
            el.set_metadata(m);
        }
    }
    Ok(tpl)
}

/// The topic-partitions of a list.
pub(crate) fn tpl_partitions(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}
