<?php
// PHP's built-in server, as CGI-style backends see headers: X-Line-User-Id and
// X_Line_User_Id both become $_SERVER['HTTP_X_LINE_USER_ID'].
header('Content-Type: application/json');
$server = array_filter($_SERVER, fn($k) => str_starts_with($k, 'HTTP_'), ARRAY_FILTER_USE_KEY);
echo json_encode(['user_id' => $_SERVER['HTTP_X_LINE_USER_ID'] ?? null, 'server' => $server]);
