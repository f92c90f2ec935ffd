-- Why: sellers list their own coupons newest first (GET /seller/coupons), and analytics
-- sums a seller's orders by status and time; both would otherwise scan the whole table.
CREATE INDEX coupons_seller_idx ON coupons (seller_id, created_at DESC, id);
CREATE INDEX orders_seller_status_idx ON orders (seller_id, status, created_at);
