-- Why: a seller announces a drop ("this product goes on sale in 1 min") and every viewer
-- sees a countdown, including one who joins after the announcement. The drop time lives
-- on the attached product, so detaching the product also cancels its drop; a show has at
-- most one pending drop (announcing another replaces it).
ALTER TABLE live_products ADD COLUMN drop_at timestamptz;
