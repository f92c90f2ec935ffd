-- Why: checkout (commerce/checkout.py) needs what 0001 left out: the cart a payment came
-- from (marked converted when paid), the provider's last error for the buyer, and
-- indexes for the hold-expiry sweep and for releasing one order's or payment's rows.
ALTER TABLE payments ADD COLUMN cart_id uuid REFERENCES carts (id) ON DELETE SET NULL;
ALTER TABLE payments ADD COLUMN last_error text;
-- The sweep looks only at open payments past their expiry.
CREATE INDEX payments_open_expiry_idx ON payments (expires_at) WHERE status = 'requires_payment';
CREATE INDEX stock_holds_order_idx ON stock_holds (order_id);
CREATE INDEX coupon_redemptions_payment_idx ON coupon_redemptions (payment_id);
