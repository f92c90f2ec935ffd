-- Why: in a drop at 1,500 attempts/s, place_checkouts() (migration 0070) spent 0.5-1 ms
-- of one PostgreSQL backend per sale, which the two cores it shares with the server
-- barely kept up with: a group of 50 took 26-50 ms, sales queued behind it, and the
-- drop's p95 stayed near 100 ms. Most of that was per-statement overhead: each sale ran
-- place_checkout's dozen statements in a subtransaction of its own. This version does
-- the group's work in a fixed number of set-based statements:
--
--   1. claim every sale's idempotency key in one INSERT (a key already there: the sale
--      is a replay and is answered with the stored hash and answer);
--   2. lock the group's variants in id order and read their stock;
--   3. decide each sale in the group's order, in PL/pgSQL with no statements: not
--      enough stock left for any line (SS001, the first short variant), else the
--      address is not the buyer's (SS004, the same precedence as place_checkout), else
--      the sale takes its units;
--   4. write the kept sales' payments, orders, items, holds and 'hold' inventory events
--      with one INSERT each, and set each variant's stock once; give back the keys of
--      the refused sales.
--
-- Same arguments as before: a JSON array of place_checkout's parameters by name without
-- their p_ (commerce/sales.py Sale). One row per sale in the input's order, as before,
-- each also carrying `stock_left`: for every variant of the group, the row version
-- (xmin) the group locked and the stock it left, {"<variant id>": ["<xmin>", stock]}.
-- A sale whose stock read saw that same version was read before this group's commit,
-- so if it needs more than the group left it can be refused at once, exactly
-- (commerce/sales.py).
-- A sale whose key an earlier sale of the same group claimed and then lost to a refusal
-- gets error_state 'SS000': the caller writes it again on its own. Sales with a coupon
-- are never grouped (lock order: coupon, then variants) and are refused here. Any other
-- error aborts the whole group; the caller then writes its sales one by one with
-- place_checkout.
--
-- Row-level security: the rows are written for several buyers in one statement, so this
-- runs as trusted server work (app.system = 'on'); what RLS checked per buyer is checked
-- here explicitly: the address must be the buyer's, and every row is written with the
-- sale's own user id.
CREATE TYPE checkout_sale AS (
    "user" uuid, key text, hash text, response text, payment uuid, provider text, amount bigint,
    currency text, ttl_seconds float8, cart uuid, intent text, client_secret text, coupon uuid,
    livestream uuid, address uuid, order_ids uuid[], sellers uuid[], subtotals bigint[],
    discounts bigint[], line_orders uuid[], product_ids uuid[], variant_ids uuid[], qtys int[],
    prices bigint[]
);

DROP FUNCTION place_checkouts(jsonb);
CREATE FUNCTION place_checkouts(p_sales jsonb)
RETURNS TABLE (replayed boolean, request_hash text, response jsonb, expires_at timestamptz,
               error_state text, error_detail text, stock_left jsonb)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_sales checkout_sale[];
    v_n int;
    v_claimed uuid[];        -- payments of the sales that claimed their key
    v_address_ok boolean[];  -- per sale: the address is the buyer's
    v_ids uuid[];            -- the group's variants, locked, in id order
    v_versions text[];       -- their row versions (xmin) as locked, before this group's update
    v_stock int[];           -- their stock, as the kept sales leave it
    v_left jsonb;
    v_taken int[];
    v_kept checkout_sale[] := '{}';
    v_refused_users uuid[] := '{}';  -- the refused sales' keys, given back
    v_refused_keys text[] := '{}';
    v_state text[];
    v_detail text[];
    v_now timestamptz := now();
    s checkout_sale;
    k int;
    v_short uuid;
BEGIN
    PERFORM set_config('app.user_id', '', true), set_config('app.system', 'on', true);
    v_sales := ARRAY(SELECT jsonb_populate_record(NULL::checkout_sale, e.value)
                     FROM jsonb_array_elements(p_sales) WITH ORDINALITY e(value, n) ORDER BY e.n);
    v_n := coalesce(array_length(v_sales, 1), 0);
    v_state := array_fill(NULL::text, ARRAY[v_n]);
    v_detail := array_fill(NULL::text, ARRAY[v_n]);
    IF EXISTS (SELECT 1 FROM unnest(v_sales) x WHERE x.coupon IS NOT NULL) THEN
        RAISE EXCEPTION 'place_checkouts takes no sales with a coupon';
    END IF;

    -- Two sales of a group may carry one key (a request sent twice): the first claims it.
    -- The answer's paymentId, chosen per sale, tells which sale a claimed row is. Keys
    -- are claimed in (user, key) order, so two groups never wait on each other's keys.
    WITH claimed AS (
        INSERT INTO idempotency_keys (user_id, key, request_hash, response)
        SELECT x."user", x.key, x.hash, x.response::jsonb
        FROM unnest(v_sales) WITH ORDINALITY x ORDER BY x."user", x.key, x.ordinality
        ON CONFLICT DO NOTHING
        RETURNING (idempotency_keys.response->>'paymentId')::uuid AS payment
    )
    SELECT array_agg(payment) INTO v_claimed FROM claimed;

    v_address_ok := ARRAY(
        SELECT EXISTS (SELECT 1 FROM addresses a WHERE a.id = x.address AND a.user_id = x."user")
        FROM unnest(v_sales) WITH ORDINALITY x ORDER BY x.ordinality);

    SELECT coalesce(array_agg(l.id ORDER BY l.id), '{}'), coalesce(array_agg(l.stock ORDER BY l.id), '{}'),
           coalesce(array_agg(l.version ORDER BY l.id), '{}')
    INTO v_ids, v_stock, v_versions
    FROM (SELECT v.id, v.stock, v.xmin::text AS version FROM product_variants v
          WHERE v.id IN (SELECT unnest(x.variant_ids) FROM unnest(v_sales) x)
          ORDER BY v.id FOR UPDATE) l;
    v_taken := array_fill(0, ARRAY[coalesce(array_length(v_ids, 1), 0)]);

    FOR i IN 1 .. v_n LOOP
        s := v_sales[i];
        CONTINUE WHEN v_claimed IS NULL OR NOT s.payment = ANY (v_claimed);  -- a replay: answered below
        v_short := NULL;
        FOR j IN 1 .. coalesce(array_length(s.variant_ids, 1), 0) LOOP
            k := array_position(v_ids, s.variant_ids[j]);
            IF k IS NULL OR v_stock[k] < s.qtys[j] THEN
                v_short := s.variant_ids[j];
                EXIT;
            END IF;
        END LOOP;
        IF v_short IS NOT NULL THEN
            v_state[i] := 'SS001';
            v_detail[i] := v_short::text;
        ELSIF NOT v_address_ok[i] THEN
            v_state[i] := 'SS004';
            v_detail[i] := s.address::text;
        END IF;
        IF v_state[i] IS NOT NULL THEN
            v_refused_users := v_refused_users || s."user";
            v_refused_keys := v_refused_keys || s.key;
        ELSE
            FOR j IN 1 .. array_length(s.variant_ids, 1) LOOP
                k := array_position(v_ids, s.variant_ids[j]);
                v_stock[k] := v_stock[k] - s.qtys[j];
                v_taken[k] := v_taken[k] + s.qtys[j];
            END LOOP;
            v_kept := v_kept || s;
        END IF;
    END LOOP;

    INSERT INTO payments (id, user_id, provider, amount, currency, expires_at, cart_id,
                          provider_intent_id, client_secret)
    SELECT x.payment, x."user", x.provider, x.amount, x.currency,
           v_now + make_interval(secs => x.ttl_seconds), x.cart, x.intent, x.client_secret
    FROM unnest(v_kept) x;
    INSERT INTO orders (id, user_id, seller_id, payment_id, livestream_id, shipping_address,
                        subtotal, discount, total, currency)
    SELECT o.id, x."user", o.seller_id, x.payment, x.livestream,
           jsonb_build_object('line1', a.line1, 'line2', a.line2, 'city', a.city, 'state', a.state,
                              'postalCode', a.postal_code, 'country', a.country, 'phone', a.phone),
           o.subtotal, o.discount, o.subtotal - o.discount, x.currency
    FROM unnest(v_kept) x
    JOIN addresses a ON a.id = x.address
    CROSS JOIN LATERAL unnest(x.order_ids, x.sellers, x.subtotals, x.discounts) AS o(id, seller_id, subtotal, discount);
    INSERT INTO order_items (order_id, product_id, variant_id, qty, price)
    SELECT l.* FROM unnest(v_kept) x
    CROSS JOIN LATERAL unnest(x.line_orders, x.product_ids, x.variant_ids, x.qtys, x.prices) AS l;
    WITH h AS (
        INSERT INTO stock_holds (payment_id, order_id, variant_id, qty, expires_at)
        SELECT x.payment, l.order_id, l.variant_id, l.qty, v_now + make_interval(secs => x.ttl_seconds)
        FROM unnest(v_kept) x
        CROSS JOIN LATERAL unnest(x.line_orders, x.variant_ids, x.qtys) AS l(order_id, variant_id, qty)
        RETURNING id, order_id, variant_id, qty
    )
    INSERT INTO inventory_events (product_id, variant_id, delta, reason, order_id, hold_id)
    SELECT v.product_id, h.variant_id, -h.qty, 'hold', h.order_id, h.id
    FROM h JOIN product_variants v ON v.id = h.variant_id;
    UPDATE product_variants v SET stock = v.stock - t.taken
    FROM unnest(v_ids, v_taken) AS t(id, taken)
    WHERE v.id = t.id AND t.taken > 0;

    v_left := (SELECT coalesce(jsonb_object_agg(t.id, jsonb_build_array(t.version, t.stock)), '{}')
               FROM unnest(v_ids, v_versions, v_stock) AS t(id, version, stock));

    DELETE FROM idempotency_keys k
    USING unnest(v_refused_users, v_refused_keys) AS r(user_id, key)
    WHERE k.user_id = r.user_id AND k.key = r.key;

    FOR i IN 1 .. v_n LOOP
        s := v_sales[i];
        replayed := false;
        request_hash := NULL;
        response := NULL;
        expires_at := NULL;
        error_state := v_state[i];
        error_detail := v_detail[i];
        stock_left := v_left;
        IF v_state[i] IS NOT NULL THEN
            NULL;
        ELSIF v_claimed IS NOT NULL AND s.payment = ANY (v_claimed) THEN
            request_hash := s.hash;
            response := s.response::jsonb;
            expires_at := v_now + make_interval(secs => s.ttl_seconds);
        ELSE
            SELECT true, k.request_hash, k.response INTO replayed, request_hash, response
            FROM idempotency_keys k WHERE k.user_id = s."user" AND k.key = s.key;
            IF NOT FOUND THEN  -- claimed by an earlier sale of this group, which was refused
                replayed := false;
                error_state := 'SS000';
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
