-- Why: defense in depth. The application's queries run as a role without BYPASSRLS
-- (server/db.py), so a query that forgets its WHERE still sees only the caller's rows.
-- The caller is set per transaction by one statement:
--   SELECT set_config('app.user_id', $1, true), set_config('app.system', $2, true)
-- `app.system = 'on'` marks trusted server work with no caller (webhooks, hold expiry,
-- seller views resolved by the domain code), which may see every row.

CREATE FUNCTION app_user_id() RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT nullif(current_setting('app.user_id', true), '')::uuid
$$;

CREATE FUNCTION app_is_system() RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT coalesce(current_setting('app.system', true), '') = 'on'
$$;

ALTER TABLE addresses ENABLE ROW LEVEL SECURITY;
CREATE POLICY addresses_owner ON addresses
    USING (app_is_system() OR user_id = app_user_id())
    WITH CHECK (app_is_system() OR user_id = app_user_id());

ALTER TABLE wishlist_items ENABLE ROW LEVEL SECURITY;
CREATE POLICY wishlist_items_owner ON wishlist_items
    USING (app_is_system() OR user_id = app_user_id())
    WITH CHECK (app_is_system() OR user_id = app_user_id());

ALTER TABLE carts ENABLE ROW LEVEL SECURITY;
CREATE POLICY carts_owner ON carts
    USING (app_is_system() OR user_id = app_user_id())
    WITH CHECK (app_is_system() OR user_id = app_user_id());

ALTER TABLE cart_items ENABLE ROW LEVEL SECURITY;
CREATE POLICY cart_items_owner ON cart_items
    USING (app_is_system() OR EXISTS (
        SELECT 1 FROM carts c WHERE c.id = cart_id AND c.user_id = app_user_id()))
    WITH CHECK (app_is_system() OR EXISTS (
        SELECT 1 FROM carts c WHERE c.id = cart_id AND c.user_id = app_user_id()));

ALTER TABLE refresh_tokens ENABLE ROW LEVEL SECURITY;
CREATE POLICY refresh_tokens_owner ON refresh_tokens
    USING (app_is_system() OR user_id = app_user_id())
    WITH CHECK (app_is_system() OR user_id = app_user_id());

-- Orders are visible to their buyer and to the seller they belong to.
ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
CREATE POLICY orders_buyer_or_seller ON orders
    USING (app_is_system() OR user_id = app_user_id() OR EXISTS (
        SELECT 1 FROM sellers s WHERE s.id = seller_id AND s.user_id = app_user_id()))
    WITH CHECK (app_is_system() OR user_id = app_user_id());

ALTER TABLE order_items ENABLE ROW LEVEL SECURITY;
CREATE POLICY order_items_via_order ON order_items
    USING (app_is_system() OR EXISTS (SELECT 1 FROM orders o WHERE o.id = order_id));

ALTER TABLE payments ENABLE ROW LEVEL SECURITY;
CREATE POLICY payments_owner ON payments
    USING (app_is_system() OR user_id = app_user_id())
    WITH CHECK (app_is_system() OR user_id = app_user_id());
