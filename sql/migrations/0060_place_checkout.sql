-- Why: a checkout's writes were ten round trips between this database and one busy
-- server process, and in a drop a hundred of them queue behind each other. The server
-- now reads and computes first (commerce/checkout.py), then sends everything to
-- place_checkout() in one statement outside any explicit transaction: the function's
-- work is one transaction that commits as the statement ends, so the drop's variant row,
-- locked by take_stock() last, is held only inside PostgreSQL.
--
-- place_checkout names the caller for row-level security (local to this statement's
-- transaction), claims the idempotency key with its answer (a key already there: the
-- function writes nothing and returns the stored request hash and answer), checks the
-- address is the buyer's, takes a coupon use under the coupon's row lock (per-user
-- limit, then usage limit), and writes the payment, the redemption, one order per seller,
-- the order items, the holds and their 'hold' inventory events; then takes the stock.
-- Errors, each aborting everything: SS001 not enough stock (DETAIL: the variant id),
-- SS002 the buyer's coupon uses are spent, SS003 the coupon is used up, SS004 no such
-- address for this buyer.
CREATE FUNCTION place_checkout(
    p_user uuid, p_key text, p_hash text, p_response jsonb,
    p_payment uuid, p_provider text, p_amount bigint, p_currency text, p_ttl_seconds float8,
    p_cart uuid, p_intent text, p_client_secret text,
    p_coupon uuid, p_livestream uuid, p_address uuid,
    p_order_ids uuid[], p_sellers uuid[], p_subtotals bigint[], p_discounts bigint[],
    p_line_orders uuid[], p_product_ids uuid[], p_variant_ids uuid[], p_qtys int[], p_prices bigint[]
) RETURNS TABLE (replayed boolean, request_hash text, response jsonb, expires_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_address jsonb;
    v_expires timestamptz;
    v_per_user int;
    v_short uuid;
BEGIN
    PERFORM set_config('app.user_id', p_user::text, true), set_config('app.system', 'off', true);

    INSERT INTO idempotency_keys (user_id, key, request_hash, response)
    VALUES (p_user, p_key, p_hash, p_response) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN QUERY SELECT true, k.request_hash, k.response, NULL::timestamptz
                     FROM idempotency_keys k WHERE k.user_id = p_user AND k.key = p_key;
        RETURN;
    END IF;

    -- A sale that the stock no longer allows fails here, before the other writes
    -- (take_stock below still decides, under the row lock). In a drop, many attempts
    -- read stock before the last units went and arrive here after. After the key: a
    -- replay answers with its session whatever the stock is now.
    SELECT s.variant_id INTO v_short
    FROM unnest(p_variant_ids, p_qtys) AS s(variant_id, qty)
    JOIN product_variants v ON v.id = s.variant_id
    WHERE v.stock < s.qty ORDER BY s.variant_id LIMIT 1;
    IF v_short IS NOT NULL THEN
        RAISE EXCEPTION 'not enough stock' USING ERRCODE = 'SS001', DETAIL = v_short::text;
    END IF;

    SELECT jsonb_build_object('line1', a.line1, 'line2', a.line2, 'city', a.city, 'state', a.state,
                              'postalCode', a.postal_code, 'country', a.country, 'phone', a.phone)
    INTO v_address FROM addresses a WHERE a.id = p_address AND a.user_id = p_user;
    IF v_address IS NULL THEN
        RAISE EXCEPTION 'address not found' USING ERRCODE = 'SS004', DETAIL = p_address::text;
    END IF;

    IF p_coupon IS NOT NULL THEN
        SELECT c.per_user_limit INTO v_per_user FROM coupons c WHERE c.id = p_coupon FOR UPDATE;
        IF v_per_user IS NOT NULL AND v_per_user <= (
            SELECT count(*) FROM coupon_redemptions r
            WHERE r.coupon_id = p_coupon AND r.user_id = p_user AND r.status IN ('held', 'redeemed')
        ) THEN
            RAISE EXCEPTION 'you have already used this coupon' USING ERRCODE = 'SS002';
        END IF;
        UPDATE coupons SET used_count = used_count + 1
        WHERE id = p_coupon AND (usage_limit IS NULL OR used_count < usage_limit);
        IF NOT FOUND THEN
            RAISE EXCEPTION 'this coupon has been used up' USING ERRCODE = 'SS003';
        END IF;
    END IF;

    INSERT INTO payments (id, user_id, provider, amount, currency, expires_at, cart_id,
                          provider_intent_id, client_secret)
    VALUES (p_payment, p_user, p_provider, p_amount, p_currency,
            now() + make_interval(secs => p_ttl_seconds), p_cart, p_intent, p_client_secret)
    RETURNING payments.expires_at INTO v_expires;
    IF p_coupon IS NOT NULL THEN
        INSERT INTO coupon_redemptions (coupon_id, user_id, payment_id) VALUES (p_coupon, p_user, p_payment);
    END IF;
    INSERT INTO orders (id, user_id, seller_id, payment_id, livestream_id, coupon_id, shipping_address,
                        subtotal, discount, total, currency)
    SELECT s.id, p_user, s.seller_id, p_payment, p_livestream, p_coupon, v_address,
           s.subtotal, s.discount, s.subtotal - s.discount, p_currency
    FROM unnest(p_order_ids, p_sellers, p_subtotals, p_discounts) AS s(id, seller_id, subtotal, discount);
    INSERT INTO order_items (order_id, product_id, variant_id, qty, price)
    SELECT * FROM unnest(p_line_orders, p_product_ids, p_variant_ids, p_qtys, p_prices);
    WITH h AS (
        INSERT INTO stock_holds (payment_id, order_id, variant_id, qty, expires_at)
        SELECT p_payment, s.order_id, s.variant_id, s.qty, v_expires
        FROM unnest(p_line_orders, p_variant_ids, p_qtys) AS s(order_id, variant_id, qty)
        RETURNING id, order_id, variant_id, qty
    )
    INSERT INTO inventory_events (product_id, variant_id, delta, reason, order_id, hold_id)
    SELECT s.product_id, h.variant_id, -h.qty, 'hold', h.order_id, h.id
    FROM h JOIN unnest(p_variant_ids, p_product_ids) AS s(variant_id, product_id) ON s.variant_id = h.variant_id;

    -- Last, in variant id order (the caller sorts the lines): the hot rows.
    PERFORM take_stock(p_variant_ids, p_qtys);
    RETURN QUERY SELECT false, p_hash, p_response, v_expires;
END
$$;
