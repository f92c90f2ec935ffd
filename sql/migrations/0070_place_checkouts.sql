-- Why: in a drop, sales of one variant queue on its row: each waits for the previous
-- sale's commit, and every waiting sale holds a server connection and a database
-- backend competing for the same cores. place_checkouts() runs several sales of the
-- same variants (commerce/sales.py groups them) in one transaction with one commit:
-- each sale is place_checkout() in its own subtransaction, so one sale's failure
-- (not enough stock, a spent coupon, an unknown address) undoes that sale alone.
--
-- p_sales is a JSON array of objects whose fields are place_checkout's parameters
-- without their p_ (arrays as JSON arrays; the response as JSON text). One row per sale, in the input's order: the sale's result, or
-- the SQLSTATE and DETAIL of the error that undid it.
CREATE FUNCTION place_checkouts(p_sales jsonb)
RETURNS TABLE (replayed boolean, request_hash text, response jsonb, expires_at timestamptz,
               error_state text, error_detail text)
LANGUAGE plpgsql AS $$
DECLARE
    s jsonb;
    r record;
    v_state text;
    v_detail text;
BEGIN
    FOR s IN SELECT value FROM jsonb_array_elements(p_sales) WITH ORDINALITY ORDER BY ordinality LOOP
        BEGIN
            SELECT * INTO r FROM place_checkout(
                (s->>'user')::uuid, s->>'key', s->>'hash', (s->>'response')::jsonb,
                (s->>'payment')::uuid, s->>'provider', (s->>'amount')::bigint, s->>'currency',
                (s->>'ttl_seconds')::float8, (s->>'cart')::uuid, s->>'intent', s->>'client_secret',
                (s->>'coupon')::uuid, (s->>'livestream')::uuid, (s->>'address')::uuid,
                ARRAY(SELECT jsonb_array_elements_text(s->'order_ids'))::uuid[],
                ARRAY(SELECT jsonb_array_elements_text(s->'sellers'))::uuid[],
                ARRAY(SELECT jsonb_array_elements_text(s->'subtotals'))::bigint[],
                ARRAY(SELECT jsonb_array_elements_text(s->'discounts'))::bigint[],
                ARRAY(SELECT jsonb_array_elements_text(s->'line_orders'))::uuid[],
                ARRAY(SELECT jsonb_array_elements_text(s->'product_ids'))::uuid[],
                ARRAY(SELECT jsonb_array_elements_text(s->'variant_ids'))::uuid[],
                ARRAY(SELECT jsonb_array_elements_text(s->'qtys'))::int[],
                ARRAY(SELECT jsonb_array_elements_text(s->'prices'))::bigint[]
            );
            replayed := r.replayed;
            request_hash := r.request_hash;
            response := r.response;
            expires_at := r.expires_at;
            error_state := NULL;
            error_detail := NULL;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_detail = PG_EXCEPTION_DETAIL;
            replayed := false;
            request_hash := NULL;
            response := NULL;
            expires_at := NULL;
            error_state := v_state;
            error_detail := v_detail;
        END;
        RETURN NEXT;
    END LOOP;
END
$$;
