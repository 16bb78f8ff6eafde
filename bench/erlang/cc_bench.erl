%% An Erlang/OTP `diameter` credit-control pair, the second reference of issue #10 (bench/references.sh runs it).
%%
%% `server([Port])`: a diameter service answering every CCR with a CCA granting 60 s in one
%% Multiple-Services-Credit-Control, like the OCS simulator's answer. `client([Port, Concurrency, Seconds])`: a
%% service on one TCP connection to it, with Concurrency processes each keeping one CCR-U outstanding (the shape of
%% examples/ocs_load.rs). It warms up for one second, counts the answers of the next Seconds, and prints
%% "throughput: N tx/s" and the errors.
%%
%% The server prints the decode errors of the first request that has any (tests/it/erlang.rs checks our requests
%% with it). Both ends are one module: the diameter_app callbacks below serve both services. The arguments are strings
%% (`erl -run cc_bench server 3868`).

-module(cc_bench).

-export([server/1, client/1]).
-export([peer_up/3, peer_down/3, pick_peer/4, prepare_request/3, prepare_retransmit/3, handle_answer/4,
         handle_error/4, handle_request/3]).

-include_lib("diameter/include/diameter.hrl").

-define(CC_APP, 4).

service(Host) ->
    [{'Origin-Host', Host ++ ".localdomain"},
     {'Origin-Realm', "localdomain"},
     {'Vendor-Id', 0},
     {'Product-Name', "cc_bench"},
     {'Auth-Application-Id', [?CC_APP]},
     {decode_format, map},
     {application, [{alias, cc}, {dictionary, cc_bench_dict}, {module, ?MODULE}]}].

transport(Kind, Port) ->
    [{transport_module, diameter_tcp},
     {transport_config, [{reuseaddr, true}, {ip, {127, 0, 0, 1}}]
                        ++ case Kind of
                               listen -> [{port, Port}];
                               connect -> [{raddr, {127, 0, 0, 1}}, {rport, Port}]
                           end}].

server([Port]) ->
    server([Port, "answer"]);
%% "reauth": also re-authorizes each session after its CCR-I (RAR) and aborts it after its second CCR-U (ASR),
%% printing every CCR and the answers to its own requests (tests/it/erlang.rs).
server([Port, Mode]) ->
    persistent_term:put(cc_bench_mode, Mode),
    ok = diameter:start(),
    ok = diameter:start_service(server, service("ocs")),
    {ok, _} = diameter:add_transport(server, {listen, transport(listen, list_to_integer(Port))}),
    receive stop -> ok end.

client([Port, Concurrency, Seconds]) ->
    ok = diameter:start(),
    true = diameter:subscribe(client),
    ok = diameter:start_service(client, service("load")),
    {ok, _} = diameter:add_transport(client, {connect, transport(connect, list_to_integer(Port))}),
    receive #diameter_event{info = {up, _, _, _, _}} -> ok after 10000 -> exit(no_peer) end,
    N = list_to_integer(Concurrency),
    Secs = list_to_integer(Seconds),
    Now = erlang:monotonic_time(millisecond),
    Start = Now + 1000,
    Stop = Start + Secs * 1000,
    Self = self(),
    Workers = [spawn_link(fun() -> worker(Self, I, Start, Stop) end) || I <- lists:seq(1, N)],
    {Answers, Errors} = collect(Workers, 0, 0),
    io:format("sessions: ~b outstanding on one connection, ~b answers in ~b s, ~b not 2001~n",
              [N, Answers, Secs, Errors]),
    io:format("throughput: ~b tx/s~n", [Answers div Secs]),
    halt(0).

collect([], A, E) -> {A, E};
collect([W | Ws], A, E) ->
    receive {W, WA, WE} -> collect(Ws, A + WA, E + WE) end.

%% One session: a CCR-I, then CCR-Us, each reporting 1 s of usage, until Stop. Answers received between Start and
%% Stop are counted; failures are counted whenever they happen (the CCR-I goes during the warm-up).
worker(Parent, I, Start, Stop) ->
    Sid = diameter:session_id("load.localdomain;" ++ integer_to_list(I)),
    {A, E} = loop(Sid, 0, Start, Stop, 0, 0),
    Parent ! {self(), A, E}.

loop(Sid, Number, Start, Stop, A, E) ->
    Now = erlang:monotonic_time(millisecond),
    if
        Now >= Stop -> {A, E};
        true ->
            Result = diameter:call(client, cc, ccr(Sid, Number), []),
            Counted = erlang:monotonic_time(millisecond) >= Start,
            case {Result, Counted} of
                {{ok, ['CCA' | #{'Result-Code' := 2001}]}, false} -> loop(Sid, Number + 1, Start, Stop, A, E);
                {{ok, ['CCA' | #{'Result-Code' := 2001}]}, true} -> loop(Sid, Number + 1, Start, Stop, A + 1, E);
                {_, _} -> loop(Sid, Number + 1, Start, Stop, A, E + 1)
            end
    end.

ccr(Sid, Number) ->
    Used = case Number of
               0 -> [];
               _ -> [{'Used-Service-Unit', [[{'CC-Time', 1}]]}]
           end,
    ['CCR',
     {'Session-Id', Sid},
     {'Origin-Host', "load.localdomain"},
     {'Origin-Realm', "localdomain"},
     {'Destination-Realm', "localdomain"},
     {'Auth-Application-Id', ?CC_APP},
     {'Service-Context-Id', "32260@3gpp.org"},
     {'CC-Request-Type', case Number of 0 -> 1; _ -> 2 end},
     {'CC-Request-Number', Number},
     {'Subscription-Id', [[{'Subscription-Id-Type', 0}, {'Subscription-Id-Data', "46701234567"}]]},
     {'Multiple-Services-Credit-Control',
      [[{'Requested-Service-Unit', [[{'CC-Time', 60}]]}, {'Rating-Group', 10}] ++ Used]}].

%% diameter_app callbacks.

peer_up(_Svc, _Peer, State) -> State.
peer_down(_Svc, _Peer, State) -> State.
pick_peer([Peer | _], _Remote, _Svc, _Extra) -> {ok, Peer}.
prepare_request(Packet, _Svc, _Peer) -> {send, Packet}.
prepare_retransmit(Packet, _Svc, _Peer) -> {send, Packet}.
handle_answer(#diameter_packet{msg = Msg}, _Request, _Svc, _Peer) -> {ok, Msg}.
handle_error(Reason, _Request, _Svc, _Peer) -> {error, Reason}.

handle_request(#diameter_packet{msg = ['CCR' | Req], errors = Errors}, _Svc, _Peer) ->
    Errors == [] orelse report(Errors),
    #{'Session-Id' := Sid, 'CC-Request-Type' := Type, 'CC-Request-Number' := Number} = Req,
    persistent_term:get(cc_bench_mode, "answer") == "reauth" andalso reauth(Req),
    {reply, ['CCA',
             {'Session-Id', Sid},
             {'Result-Code', 2001},
             {'Origin-Host', "ocs.localdomain"},
             {'Origin-Realm', "localdomain"},
             {'Auth-Application-Id', ?CC_APP},
             {'CC-Request-Type', Type},
             {'CC-Request-Number', Number},
             {'Multiple-Services-Credit-Control',
              [[{'Granted-Service-Unit', [[{'CC-Time', 60}]]}, {'Rating-Group', 10}, {'Result-Code', 2001}]]}]}.

%% What the decoder found wrong in a request, printed the first time (tests/it/erlang.rs reads it). diameter also
%% answers such a request with the error's Result-Code (5001 and a Failed-AVP for an unknown M-bit AVP) instead of
%% the 2001 above.
report(Errors) ->
    case persistent_term:get(cc_bench_reported, false) of
        true -> ok;
        false ->
            persistent_term:put(cc_bench_reported, true),
            io:format("decode errors: ~p~n", [Errors])
    end.

%% In "reauth" mode: after a CCR-I, a RAR (RFC 4006 §5.5: the client answers and sends a CCR-U); after the second
%% CCR-U, an ASR (§5.6: the client answers and ends the session with a CCR-T) and a RAR for an unknown session.
%% Sent from processes of their own, once this CCR's answer has gone.
reauth(#{'Session-Id' := Sid, 'CC-Request-Type' := Type, 'CC-Request-Number' := Number,
         'Origin-Host' := Host, 'Origin-Realm' := Realm}) ->
    io:format("CCR ~b ~b~n", [Type, Number]),
    Common = [{'Session-Id', Sid}, {'Origin-Host', "ocs.localdomain"}, {'Origin-Realm', "localdomain"},
              {'Destination-Realm', Realm}, {'Destination-Host', Host}, {'Auth-Application-Id', ?CC_APP}],
    Ask = fun(Name, Msg) ->
                  spawn(fun() ->
                                timer:sleep(50),
                                case diameter:call(server, cc, Msg, []) of
                                    {ok, [_ | #{'Result-Code' := RC}]} -> io:format("~s answered ~b~n", [Name, RC]);
                                    Other -> io:format("~s failed: ~p~n", [Name, Other])
                                end
                        end)
          end,
    case {Type, Number} of
        {1, _} -> Ask("RAR", ['RAR', {'Re-Auth-Request-Type', 0} | Common]);
        {2, 2} ->
            Ask("ASR", ['ASR' | Common]),
            %% And a RAR for a session the client never had (RFC 6733 §8.3: 5002 DIAMETER_UNKNOWN_SESSION_ID).
            Unknown = lists:keyreplace('Session-Id', 1, Common, {'Session-Id', Sid ++ ".unknown"}),
            Ask("unknown RAR", ['RAR', {'Re-Auth-Request-Type', 0} | Unknown]);
        _ -> ok
    end.
