//! SQLite implementation of the store. STUB.
use super::*;

pub struct SqliteStore {
    _settings: StoreSettings,
}

impl SqliteStore {
    pub async fn connect(_url: &str, settings: StoreSettings) -> Result<Self> {
        Ok(Self {
            _settings: settings,
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result {
        todo!()
    }
    async fn ping(&self) -> Result {
        todo!()
    }
    async fn apply_inbound(
        &self,
        _batch: &[Inbound],
        _now: DateTime<Utc>,
    ) -> Result<Vec<InboundOutcome>> {
        todo!()
    }
    async fn get(&self, _id: CallbackId) -> Result<Option<Callback>> {
        todo!()
    }
    async fn list(&self, _filter: &ListFilter) -> Result<Vec<Callback>> {
        todo!()
    }
    async fn attempts(&self, _id: CallbackId) -> Result<Vec<Attempt>> {
        todo!()
    }
    async fn claim(
        &self,
        _id: CallbackId,
        _agent_id: &str,
        _now: DateTime<Utc>,
    ) -> Result<Callback> {
        todo!()
    }
    async fn record_attempt(
        &self,
        _id: CallbackId,
        _report: &AttemptReport,
        _now: DateTime<Utc>,
    ) -> Result<Callback> {
        todo!()
    }
    async fn cancel(
        &self,
        _id: CallbackId,
        _reason: CancelReason,
        _now: DateTime<Utc>,
    ) -> Result<Callback> {
        todo!()
    }
    async fn fire_times(
        &self,
        _until: DateTime<Utc>,
        _limit: u32,
    ) -> Result<Vec<(DateTime<Utc>, CallbackId)>> {
        todo!()
    }
    async fn advance(&self, _id: CallbackId, _now: DateTime<Utc>) -> Result<Advanced> {
        todo!()
    }
    async fn ready_deliveries(&self, _now: DateTime<Utc>, _limit: u32) -> Result<Vec<Delivery>> {
        todo!()
    }
    async fn next_delivery_at(&self) -> Result<Option<DateTime<Utc>>> {
        todo!()
    }
    async fn record_try(&self, _id: &str, _result: &TryResult, _now: DateTime<Utc>) -> Result {
        todo!()
    }
    async fn get_delivery(&self, _id: &str) -> Result<Option<Delivery>> {
        todo!()
    }
    async fn list_deliveries(
        &self,
        _state: Option<DeliveryState>,
        _limit: u32,
    ) -> Result<Vec<Delivery>> {
        todo!()
    }
    async fn replay_delivery(&self, _id: &str, _now: DateTime<Utc>) -> Result<Option<Delivery>> {
        todo!()
    }
}
